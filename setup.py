# Kept so that `pip install -e .` works with older setuptools front-ends; all metadata is in setup.cfg.
from setuptools import setup

setup()
