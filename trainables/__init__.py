"""Everything that runs inside a Ray Tune trial: VLSM adapters, context learners, data, the training loop.

`benchmark` (the driver side) may import from here; nothing here imports `benchmark`.
"""
