"""The disk a run directory takes, for `tunevlseg plan --estimate`: a small term beside the GPU-hours.

After the sweep a finished trial keeps one checkpoint (docs/training.md): its artifact (the tuned prompt; for
E2E the fine-tuned weights) with `final.json`, plus Tune's logs and `preview.png`; a local MLflow store holds
a second copy of the artifact. So the run directory is about trials x (artifact x copies + a fixed part).
Artifact sizes: an E2E artifact is the VLSM's weights in fp32 (local safetensors are counted from their
header; a hub id is looked up below, else assumed); a prompt learner's is assumed to be 3% of that (printed
as an assumption). While
trials run, each running trial also holds up to `execution.checkpoints_to_keep` resumable checkpoints of
about 4x its trainable parameters (weights, two optimizer moments, the best epoch's copy).
"""

from __future__ import annotations

from pathlib import Path

MB = 1e6
# fp32 weights of the shipped configs' hub checkpoints (parameters x 4 bytes).
HUB_WEIGHTS_MB = {"CIDAS/clipseg-rd64": 603.0, "CIDAS/clipseg-rd16": 598.0}
ASSUMED_E2E_MB = 600.0  # a VLSM of CLIPSeg/CRIS size whose weights are not on this machine
ASSUMED_PROMPT_MB = 8.0  # a tuned prompt: the largest learner (MaPLe, depth 11) is a few M parameters
FIXED_MB = 0.5  # per trial: Tune's params/result/progress files, two preview.png, MLflow rows and metrics


PROMPT_FRACTION = 0.03  # a tuned prompt vs its VLSM's fp32 weights (MaPLe at depth 11 on CLIPSeg: ~3%)


def _safetensors_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header (8-byte length, then JSON of dtype/shape per tensor)."""
    import json
    import math

    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def weights_mb(weights: str | None) -> float | None:
    """fp32 size of a VLSM's weights (what an E2E artifact stores): local safetensors counted, a known hub id
    looked up, else None."""
    if not weights:
        return None
    path = Path(weights)
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) if path.is_dir() else []
    try:
        params = sum(_safetensors_params(f) for f in files if f.suffix == ".safetensors")
    except (OSError, ValueError, KeyError, TypeError):
        params = 0
    return params * 4 / MB if params else HUB_WEIGHTS_MB.get(weights)


def trial_mb(cell, mlflow_copy: bool) -> tuple[float, bool]:
    """(MB a finished trial of `cell` keeps, whether that size is assumed)."""
    vlsm_mb = weights_mb((cell.config.get("model") or {}).get("weights"))
    if cell.learner == "e2e":
        artifact, assumed = (vlsm_mb, False) if vlsm_mb else (ASSUMED_E2E_MB, True)
    else:
        artifact, assumed = (vlsm_mb * PROMPT_FRACTION if vlsm_mb else ASSUMED_PROMPT_MB), True
    return artifact * (2 if mlflow_copy else 1) + FIXED_MB, assumed


def run_dir_gb(cells, mlflow_copy: bool) -> tuple[float, list[str]]:
    """(GB of the finished run directory, notes on what was assumed)."""
    total, assumed = 0.0, set()
    for c in cells:
        mb, guess = trial_mb(c, mlflow_copy)
        total += mb * (c.trials + getattr(c, "reseeds", 0))
        if guess:
            assumed.add("E2E weights" if c.learner == "e2e" else "prompt artifacts")
    notes = [f"run directory after the sweep: about {total / 1e3:.2f} GB (one checkpoint per finished trial: "
             f"its artifact{', twice with the local MLflow store' if mlflow_copy else ''}, + {FIXED_MB:g} MB of "
             "logs; running trials add their resumable checkpoints, ~4x their trainable weights each)"]
    if assumed:
        notes.append(f"disk: assumed sizes for {', '.join(sorted(assumed))} (E2E {ASSUMED_E2E_MB:g} MB when the "
                     f"weights are not on this machine; a prompt {PROMPT_FRACTION:.0%} of its VLSM's weights, "
                     f"else {ASSUMED_PROMPT_MB:g} MB)")
    return total / 1e3, notes
