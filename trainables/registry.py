"""A tiny name -> entry registry (peft's `register_peft_method` is the model).

Names are lower-case snake/kebab words and unique; an unknown name is a one-line error listing the
allowed ones, which is what users see when they mistype a learner or VLSM in a spec.
"""

from __future__ import annotations

import re
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message names the allowed values."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, discover: Callable[[], None] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        # Called once, on the first look-up: imports the modules whose import registers the entries.
        self._discover = discover

    def _ensure(self) -> None:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            discover()

    def register(self, name: str, entry: T) -> T:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits, '_' or '-'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister `name` (tests that register an entry of their own remove it again)."""
        del self._entries[name]

    def get(self, name: str) -> T:
        self._ensure()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
