"""Context learners, one folder each: `<name>/__init__.py` (torch-free config + catalog entry) and
`<name>/model.py` (the torch module). `trainables.catalog` finds the folders; nothing lists them."""
