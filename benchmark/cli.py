"""`tunevlseg` / `python -m benchmark`: one subcommand per module in `benchmark.commands`.

Each command module defines NAME, HELP, `add_arguments(parser)` and `run(args) -> int`, and keeps heavy
imports (torch, ray) inside `run` so that `--help` and torch-free commands (`tables`, `plan`) start fast.
User errors (ConfigError, FileNotFoundError, ...) are printed as one line, never as a traceback.

Every parser is a `_Parser`: long options must be spelled out (argparse would otherwise take `--storag`
for `--storage`, a silent guess on a command that can start a thousand-trial sweep), a misspelt option or
choice (a subcommand included) gets a did-you-mean, and output piped into `head` ends quietly.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
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


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations and with did-you-mean. Subparsers (`add_subparsers`, also those the
    command modules add) are made of the parser's own class, so every level behaves alike."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # Refused here, not by the top-level parser, so the message names this (sub)command's options.
        for arg in extras:
            if arg.startswith("--") and len(arg) > 2:
                name = arg.split("=", 1)[0]
                known = [o for o in self._option_string_actions if o.startswith("--")]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                if close:
                    self.error(f"unrecognized argument: {name} (did you mean {close[0]}?)")
        return namespace, extras

    def _check_value(self, action, value):
        # argparse's own check (private API, stable since Python 3.2), plus the closest valid choice.
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {', '.join(choices)}){hint}")
        return super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _local_ray_auth() -> None:
    """For a command that starts its own local Ray: Ray 2.60 turns token auth on for a local cluster whose
    RAY_AUTH_MODE is unset, and warns about it on every start. Stating the mode it picks anyway, with Ray's
    documented variable, keeps that behaviour without the warning. It must be set before `import ray` (Ray
    caches its config at import), so here, at the process's start; a value the user set wins, and a
    cluster joined with --address keeps the user's environment."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


# Errors that mean "the user asked for something wrong": one clear line, exit 2.
def _user_errors() -> tuple[type[BaseException], ...]:
    from benchmark.sweep.preflight import PreflightError
    from trainables.config import ConfigError
    from trainables.registry import UnknownNameError

    return (ConfigError, UnknownNameError, FileNotFoundError, NotADirectoryError, PreflightError)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's shutdown
    except BrokenPipeError:
        # Output piped into `head` (or a pager that quit): stop quietly, as the CPython docs recommend for
        # SIGPIPE (signal module, "Note on SIGPIPE"); stdout goes to devnull so the flush at exit cannot
        # raise again, and the exit status is 1, Python's own for EPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "address") and not args.address:
        _local_ray_auth()
    try:
        return int(args._run(args) or 0)
    except _user_errors() as e:
        print(f"tunevlseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tunevlseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if isinstance(e, BrokenPipeError) or e.errno not in _STORAGE_ERRNOS:
            raise
        # A disk that filled up (or was remounted read-only) mid-run: what happened and the fix, one line.
        where = f" ({e.filename})" if e.filename else ""
        print(f"tunevlseg {args.command}: error: {e.strerror}{where}: free space on (or remount) that storage, then "
              "rerun the same command; finished trials are kept and the run resumes", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
