"""The name registry (trainables/registry.py): unknown names with the closest one, duplicates, spelling."""

import pytest

from trainables.registry import Registry, UnknownNameError


def test_registry_unknown_and_duplicate():
    reg: Registry[int] = Registry("learner")
    reg.register("coop", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("coop", 2)
    with pytest.raises(UnknownNameError, match=r"unknown learner 'cop' \(did you mean 'coop'\?\); allowed: coop"):
        reg.get("cop")
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("CoOp", 3)
