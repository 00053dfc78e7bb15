"""Stage 3: trial records (Parquet), the run directory, the selection rule, tables, figures and the report. Torch-free."""
