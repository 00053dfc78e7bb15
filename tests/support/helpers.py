"""Helpers shared by several test modules (one module, so no test imports another; issue #22).

On sys.path through setup.cfg's `pythonpath = tests/support`: `from helpers import TinySegmenter`. Kept in
a folder of its own so that putting it on sys.path puts nothing else there (tests/benchmark must never
shadow the real `benchmark` package).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from torch import nn

from trainables.trial import DataConfig, TrainConfig, TrialConfig, fit

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"


# -- the training loop's stand-in model and data (tests/trainables/trial) --------------------------------

class TinySpec:
    image_size = 16
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)


class TinySegmenter(nn.Module):
    """A frozen 'backbone' conv plus a trainable prompt bias and 1x1 head: enough to learn blobs."""

    spec = TinySpec()

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.backbone.requires_grad_(False)
        self.context = nn.Parameter(torch.zeros(8))
        self.head = nn.Conv2d(8, 1, 1)

    def tokenize(self, texts):
        ids = torch.tensor([[len(t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def tokenize_batch(self, texts):
        distinct = list(dict.fromkeys(texts))
        return {**self.tokenize(distinct), "text_index": torch.tensor([distinct.index(t) for t in texts])}

    def forward(self, pixel_values, input_ids, attention_mask, text_index=None):
        h = torch.relu(self.backbone(pixel_values) + self.context.view(1, -1, 1, 1))
        return self.head(h)

    def named_trainable_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def param_groups(self, weight_decay):
        return [{"params": [self.head.weight], "weight_decay": weight_decay},
                {"params": [self.head.bias, self.context], "weight_decay": 0.0}]

    def save_artifact(self, directory, data=None):
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({n: p for n, p in self.named_trainable_parameters()}, Path(directory) / "t.pt")


class BlobData(torch.utils.data.Dataset):
    """Bright squares on dark noise; the mask is the square."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            img = torch.rand(3, 16, 16, generator=g) * 0.3
            mask = torch.zeros(1, 16, 16)
            y, x = torch.randint(0, 10, (2,), generator=g).tolist()
            img[:, y : y + 6, x : x + 6] += 0.7
            mask[:, y : y + 6, x : x + 6] = 1
            self.items.append({"image": (img - 0.5) / 0.5, "mask": mask, "prompt": "blob.",
                               "original_size": (16, 16), "index": i})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def original_mask(self, i):
        return self.items[i]["mask"][0]


def tiny_cfg(**train):
    """A TrialConfig for `fit` on BlobData; `train` overrides TrainConfig fields."""
    base = dict(lr=0.3, weight_decay=1e-4, batch_size=4, effective_batch_size=8, max_epochs=6, min_epochs=1,
                device="cpu")
    base.update(train)
    return TrialConfig(model=None, data=DataConfig(dataset="blobs", root="/nonexistent"), train=TrainConfig(**base))


def blob_data():
    return {"train": BlobData(24, 0), "val": BlobData(8, 1), "test": BlobData(8, 2)}


def run_fit(cfg, resume_dir=None, stop_after=None, tmp=None, data=blob_data):
    """`fit` on a fresh TinySegmenter; returns (final, reports, saved checkpoint copies, model)."""
    torch.manual_seed(0)
    model = TinySegmenter()
    reports, saved = [], []

    def report(metrics, ckpt_dir):
        reports.append(metrics)
        if ckpt_dir is not None and tmp is not None:
            dst = Path(tmp) / f"ckpt{metrics['epoch']}"
            shutil.copytree(ckpt_dir, dst)
            saved.append(dst)
        if stop_after is not None and metrics.get("epoch") == stop_after and ckpt_dir is not None:
            raise KeyboardInterrupt  # simulate the process dying right after the checkpoint is persisted

    try:
        final = fit(cfg, report, resume_dir=resume_dir, model=model, datasets=data())
    except KeyboardInterrupt:
        final = None
    return final, reports, saved, model



# -- sweeps of the synthetic trainable (tests/benchmark/sweep) -------------------------------------------

def spec_file(tmp_path: Path, **changes) -> Path:
    """experiments/smoke.yaml with `a__b=value` changes, written under tmp_path/experiments."""
    data = yaml.safe_load(SMOKE.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / "experiments" / "smoke.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def mlflow_runs(run_dir: Path, spec: str = "smoke"):
    """The sweep's MLflow trial runs and cell runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(spec)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("tunevlseg.role") == "trial"]
    cells = [r for r in runs if r.data.tags.get("tunevlseg.role") == "cell"]
    return trials, cells
