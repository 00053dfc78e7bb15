"""VLSM adapters. Importing this package registers every adapter in `VLSMS`."""

from pathlib import Path

from trainables.vlsm import clipseg  # noqa: F401  (registers "clipseg")

if (Path(__file__).parent / "cris.py").exists():  # CRIS adapter, written separately; registers "cris"
    from trainables.vlsm import cris  # noqa: F401
