"""The trial config dataclasses are torch-free: the driver (`run --smoke`, reseeding) reads them without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainables.config import ConfigError
from trainables.trial_config import DEFAULT_SEED, DataConfig, TrainConfig

REPO = Path(__file__).resolve().parents[3]

# `sys.modules["torch"] = None` makes every `import torch` raise ImportError, whoever tries it.
_NO_TORCH = """
import sys
sys.modules["torch"] = None
from trainables.trial_config import DataConfig, TrainConfig, TrialConfig
from benchmark.plan.spec import load_spec
from benchmark.sweep import reseed, smoke

DataConfig(dataset="kvasir", root="/tmp", feature_cache="0.5")
assert TrainConfig().seed == reseed.DEFAULT_SEED
reh = smoke.build_rehearsal(load_spec("experiments/smoke.yaml"), on_gpu=False, cpus=1)
print("CELLS", len(reh.plan.cells))
"""


def test_trial_config_and_the_smoke_rehearsal_need_no_torch():
    done = subprocess.run([sys.executable, "-c", _NO_TORCH], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "CELLS 2" in done.stdout


def test_default_seed_is_the_train_configs():
    assert TrainConfig().seed == DEFAULT_SEED == 12345  # the original's seed (reference spec §5)


@pytest.mark.parametrize("bad", ["lots", -1, float("nan")])
def test_a_bad_feature_cache_setting_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match="data.feature_cache"):
        DataConfig(dataset="kvasir", root="/tmp", feature_cache=bad)
