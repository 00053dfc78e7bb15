"""Stage 1: experiment specs, the search space as data, the matrix of cells, the cost estimate. Torch-free."""
