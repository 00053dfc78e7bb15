"""Which checkpoint a restored trial continues from (torch-free: the synthetic trainable uses it too)."""

from __future__ import annotations

from pathlib import Path

from trainables.protocol import FINAL_FILE


def restorable_checkpoint(ckpt):
    """The checkpoint a restored trial continues from. Tune names the one of its last experiment snapshot;
    the driver deletes a finished trial's earlier checkpoints (benchmark/sweep/checkpoints.py), so a driver
    stopped between that and the next snapshot leaves one that is gone: then the trial's final checkpoint
    beside it (the trial is done), else none (it trains again from the start: the same seed, the same result).
    Only on a local (or shared, mounted) file system; a remote one is left to Tune."""
    import pyarrow.fs

    if ckpt is None or not isinstance(getattr(ckpt, "filesystem", None), pyarrow.fs.LocalFileSystem):
        return ckpt
    path = Path(ckpt.path)
    if path.is_dir():
        return ckpt
    finals = sorted(path.parent.glob(f"checkpoint_*/{FINAL_FILE}"))
    if finals:
        from ray import tune

        return tune.Checkpoint.from_directory(str(finals[-1].parent))
    return None
