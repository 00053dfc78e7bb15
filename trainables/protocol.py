"""What a trial reports to the driver, torch-free: both sides import these names, neither restates them.

A trial's last result carries `status` (one of TRIAL_STATUSES) and, when it fails, `error`; the sweep
minimises OBJECTIVE. The tuned prompt travels in the trial's last checkpoint, in CHECKPOINT_ARTIFACT.
"""

from __future__ import annotations

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"  # a NaN/inf loss: a result (TPE learns the region is bad), not a crash
STATUS_ERROR = "error"
STATUS_PRUNED = "pruned"  # stopped early by the sweep's scheduler (execution.scheduler: asha); no test metrics
TRIAL_STATUSES = (STATUS_OK, STATUS_DIVERGED, STATUS_ERROR, STATUS_PRUNED)

OBJECTIVE = "objective"  # the metric key the sweep minimises
CHECKPOINT_ARTIFACT = "artifact"  # the artifact's folder inside a trial's last checkpoint
FINAL_FILE = "final.json"  # in a finished trial's checkpoint: its final result, re-reported if it is restored
PREVIEW_FILE = "preview.png"  # inside the artifact: test images, ground truth, prediction (trainables.preview)

# train.max_epochs when a spec does not set it (TrainConfig's default; `tunevlseg plan` estimates with it).
DEFAULT_MAX_EPOCHS = 20
