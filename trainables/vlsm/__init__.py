"""VLSM adapters. Importing this package registers every adapter in `VLSMS`: one module per VLSM."""

from trainables.vlsm import clipseg  # noqa: F401  (registers "clipseg")
from trainables.vlsm import cris  # noqa: F401  (registers "cris")
