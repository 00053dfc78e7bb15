"""The project's shipped files, found the same way in a checkout and in an installed wheel.

Five plain folders travel with the code: the data cards and their split files (`datasets/`), the
experiment specs (`experiments/`), the embedded mini VLSMs (`models/`) and the paper's numbers
(`results/paper/`). In a checkout they sit at the repository root. A wheel carries copies under
`trainables/_shipped/` (setup.py's build step puts them there; none of them is a Python package, so a
shipped `datasets/` can never shadow Hugging Face `datasets`). Every module that reads one of these
folders asks `path(kind)`; no other module spells where they are.

Also here: the package version (always known) and the git commit (only when running from a checkout:
an installed package inside someone else's git repository must not record that repository's commit).
Torch-free; the driver and the trial workers both import it.
"""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
SHIPPED = _PACKAGE / "_shipped"

# kind -> folder relative to the project root (a checkout's root or the wheel's `_shipped/`).
FOLDERS = {"cards": "datasets", "specs": "experiments", "models": "models", "paper": "results/paper"}
SPEC_SUFFIXES = (".yaml", ".yml")


def is_checkout() -> bool:
    """True when the code runs from a source tree (a clone, or `pip install -e .`), not from a wheel."""
    return (_CHECKOUT / "setup.cfg").is_file() and (_CHECKOUT / "datasets").is_dir()


def root() -> Path:
    """The folder holding datasets/, experiments/, models/ and results/paper/."""
    return _CHECKOUT if is_checkout() else SHIPPED


def path(kind: str) -> Path:
    """The folder of one kind of shipped file (`cards`, `specs`, `models`, `paper`)."""
    if kind not in FOLDERS:
        raise KeyError(f"unknown resource kind {kind!r}; allowed: {', '.join(FOLDERS)}")
    return root() / FOLDERS[kind]


def spec_names() -> list[str]:
    folder = path("specs")
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_spec(name_or_path: str | os.PathLike) -> Path:
    """A spec by path (`experiments/table3.yaml`, `./my.yaml`) or by the name of a shipped one (`table3`).

    An existing file always wins, so a user's own `mini.yaml` in the working directory is never replaced
    by the shipped one. A miss says what is shipped and suggests the closest name."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.is_file():
        return p
    bare = "/" not in text and os.sep not in text and not text.endswith(SPEC_SUFFIXES)
    if bare:
        shipped = path("specs") / f"{text}.yaml"
        if shipped.is_file():
            return shipped
    names = spec_names()
    stem = p.stem if text.endswith(SPEC_SUFFIXES) else text
    hint = did_you_mean(stem, names)
    raise FileNotFoundError(f"spec {text!r} does not exist{hint}; give a path to a spec YAML or the name of a "
                            f"shipped one: {', '.join(names)}")


def is_local_path(value: str, base: str | os.PathLike | None = None) -> bool:
    """Whether a `weights` value names a local file or folder rather than a hub id (`owner/name`, or a bare
    `name`): the one rule the spec, the rehearsal and the adapters share. Local: absolute, `.` or `~` first,
    more than one '/', present under `base` (default: the working directory), its first part a folder there,
    or a single part with a file suffix (`cris.safetensors`)."""
    p = Path(value).expanduser()
    if p.is_absolute() or value.startswith((".", "~")) or value.count("/") > 1:
        return True
    here = Path.cwd() if base is None else Path(base)
    return ((here / p).exists() or (len(p.parts) > 1 and (here / p.parts[0]).is_dir())
            or (len(p.parts) == 1 and bool(p.suffix)))


def did_you_mean(word: str, choices, n: int = 1) -> str:
    """`" (did you mean 'x'?)"` for the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


# ---- provenance -----------------------------------------------------------------------------------------

def version() -> str:
    """The installed package's version; the source tree's when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("tunevlseg")
    except metadata.PackageNotFoundError:
        from trainables._version import __version__

        return __version__


def git_commit() -> tuple[str | None, bool]:
    """(sha, dirty) of the checkout the code runs from; (None, False) for an installed package or when git
    is not available."""
    if not is_checkout() or not (_CHECKOUT / ".git").exists():
        return None, False
    return git_at(_CHECKOUT)


def git_at(repo: Path) -> tuple[str | None, bool]:
    """(sha, dirty) of the git repository at `repo`; (None, False) when git cannot tell."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return (sha or None), bool(status.strip())


def describe_version() -> str:
    """`0.1.0` from a wheel, `0.1.0 (checkout 1a2b3c4d, modified)` from a source tree."""
    sha, dirty = git_commit()
    if sha is None:
        return version()
    return f"{version()} (checkout {sha[:12]}{', modified' if dirty else ''})"
