"""The command line's traps: abbreviated options, misspelt subcommands, output piped into `head`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import cli

REPO = Path(__file__).resolve().parents[2]


def _every_parser(parser):
    yield parser
    for action in parser._actions:
        for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "_name_parser_map") else ():
            yield from _every_parser(sub)


def test_no_parser_accepts_abbreviations():
    parsers = list(_every_parser(cli.build_parser()))
    assert len(parsers) > 12  # the top level, every command, the nested data / mlflow actions
    assert all(p.allow_abbrev is False for p in parsers), [p.prog for p in parsers if p.allow_abbrev]


def test_abbreviated_option_is_refused_with_the_spelling(capsys):
    # `--storag runs` once started a 123-trial sweep under ./results/runs.
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "mini", "--storag", "runs"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "tunevlseg run: error: unrecognized argument: --storag (did you mean --storage?)" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "mini", "--storag=runs"])
    assert e.value.code == 2 and "did you mean --storage?" in capsys.readouterr().err


@pytest.mark.parametrize("argv, suggestion", [(["tabels", "x"], "'tables'"), (["data", "lst"], "'list'"),
                                              (["mlflow", "snyc", "x"], "'sync'")])
def test_misspelt_subcommand_gets_a_did_you_mean(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"did you mean {suggestion}?"), err


def test_output_piped_into_a_closed_pipe_ends_without_a_traceback():
    # As `tunevlseg plan table3 | head -1`: the reader is gone before the command writes.
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmark", "plan", "table3"], stdout=write,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, timeout=120)
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 1
