"""`tunevlseg` / `python -m benchmark`: one subcommand per module in `benchmark.commands`.

Each command module defines NAME, HELP, `add_arguments(parser)` and `run(args) -> int`, and keeps heavy
imports (torch, ray) inside `run` so that `--help` and torch-free commands (`tables`, `plan`) start fast.
User errors (ConfigError, FileNotFoundError, ...) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# Order = order in `tunevlseg --help`.
COMMAND_MODULES = [
    "benchmark.commands.describe",
    "benchmark.commands.predict",
    "benchmark.commands.tables",
    "benchmark.commands.compare",
    "benchmark.commands.data",
    "benchmark.commands.convert_cris",
    "benchmark.commands.plan",
    "benchmark.commands.run",
    "benchmark.commands.space",
    "benchmark.commands.mlflow_sync",
    "benchmark.commands.embeddings",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunevlseg",
        description="Prompt-tuning benchmark for vision-language segmentation models (TuneVLSeg on Ray Tune).",
    )
    parser.add_argument("--version", action=_Version, help="print the version (and the checkout's commit) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod_name in COMMAND_MODULES:
        mod = importlib.import_module(mod_name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class _Version(argparse.Action):
    """Like argparse's "version" action, but asks git only when --version is given."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from trainables.resources import describe_version

        print(f"{parser.prog} {describe_version()}")
        parser.exit()


# Errors that mean "the user asked for something wrong": one clear line, exit 2.
def _user_errors() -> tuple[type[BaseException], ...]:
    from benchmark.sweep.preflight import PreflightError
    from trainables.config import ConfigError
    from trainables.registry import UnknownNameError

    return (ConfigError, UnknownNameError, FileNotFoundError, NotADirectoryError, PreflightError)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except _user_errors() as e:
        print(f"tunevlseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tunevlseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS:
            raise
        # A disk that filled up (or was remounted read-only) mid-run: what happened and the fix, one line.
        where = f" ({e.filename})" if e.filename else ""
        print(f"tunevlseg {args.command}: error: {e.strerror}{where}: free space on (or remount) that storage, then "
              "rerun the same command; finished trials are kept and the run resumes", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
