"""The package version, in the worker package so that `trainables` never imports the driver (`benchmark`
re-exports it; setup.cfg reads it from here)."""

__version__ = "0.1.0"
