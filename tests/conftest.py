"""Shared fixtures. Shared plain classes and functions are in tests/support/helpers.py (`from helpers import ...`)."""

import logging

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray per test module (startup costs seconds on 2 cores); left running if the test
    session already had one."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()
