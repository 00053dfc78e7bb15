"""VLSM adapters, one folder each: `<name>/__init__.py` (torch-free catalog entry) and the torch adapter
beside it. `trainables.catalog` finds the folders; nothing lists them."""
