"""Driver side of tunevlseg: experiment specs, the search space, the coordinator, results and tables.

Modules used by `tunevlseg tables` (spec, search_space, schema, tables, figures) must not import torch.
"""

__version__ = "0.1.0"
