"""The frozen-feature cache: never run a frozen image encoder twice on the same un-augmented image.

For a learner that does not prompt the image encoder (CoOp, CoCoOp: `PromptedVLSM.frozen_image_side`), the
adapter's image side (`VLSMAdapter.image_side`: CLIPSeg's decoder taps and pooled embedding, CRIS's
backbone maps before the text-conditioned neck) depends on the image alone. Validation and test images are
never augmented, and a training draw that leaves the pixels untouched (about 64 % of them with the paper's
augmentation) gives the resized image again; the dataset says so per sample (`image_id`, empty when the
draw changed the pixels). So those features are computed once per worker and read back afterwards.

- One cache per process, like the frozen VLSM it belongs to (`trainables.model._frozen_vlsm`): it survives
  from trial to trial of a reused worker and is emptied when another VLSM (other weights), device or bound
  comes along. Keys: (image size, stored variant, compute dtype, grad mode, image file).
- Bounded by bytes (`data.feature_cache`: "auto", "off" or a number of GB). Entries are stored in the
  compute dtype (the autocast dtype under mixed precision, which is what the decoder's first layers read).
- Val/test entries come first: they may evict training entries, never the other way round; a training
  entry that does not fit is simply not stored (a fixed subset stays cached, instead of an LRU that a
  cyclic epoch would thrash to a 0 % hit rate).
- Independent of history: an image that may be cached is computed alone (a batch of one), whether it
  then fits in the cache or not, so the feature a trial reads for it is the same bits whether an earlier
  trial of the worker cached it, in whatever batch, or this trial computes it. CPU kernels round
  differently for different batch sizes (~1e-8), and training amplifies that: when misses were computed
  together, a trial's result depended on which trials its reused worker had run before, i.e. on Ray's
  scheduling (run-to-run differences in results/mini's CoOp and CoCoOp cells). Augmented draws (no image
  id) are computed together, as the batch's augmented images: a set the trial's own seed fixes.
- Exact to rounding: a cached feature is the feature the un-cached path computes for that image, bitwise
  at batch size 1; with larger batches it differs from the un-cached path's batched pass at the ~1e-8
  level (tests/trainables/test_feature_cache.py compares whole trials).
"""

from __future__ import annotations

import collections
import os
import weakref
from dataclasses import dataclass, field

import torch

from trainables.trial_config import GB  # the setting is part of the trial config
from trainables.trial_config import parse_feature_cache as parse_setting

CPU_AUTO_CAP = 4 * GB  # "auto" on a CPU: 10 % of the RAM, at most this
GPU_AUTO_SHARE = 0.25  # "auto" on a GPU: this share of the trial's share of the device memory


def budget_bytes(setting, device: torch.device) -> int:
    """The bound in bytes of a `data.feature_cache` setting on `device` (0 = off)."""
    parsed = parse_setting(setting)
    if parsed == "off":
        return 0
    if parsed != "auto":
        return int(parsed)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(GPU_AUTO_SHARE * total * _gpu_share())
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * GB
    return int(min(0.1 * ram, CPU_AUTO_CAP))


def _gpu_share() -> float:
    """The fraction of a GPU this Ray worker was given (trials packed 4 to a GPU get 0.25); 1 outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            share = ray.get_runtime_context().get_assigned_resources().get("GPU")
            if share:
                return min(float(share), 1.0)
    except Exception:  # noqa: BLE001 - outside a Ray worker, or an older API: a whole GPU
        pass
    return 1.0


@dataclass
class _Entry:
    tensors: tuple[torch.Tensor, ...]
    nbytes: int
    evaluation: bool


class FeatureCache:
    """Per-image feature tuples, bounded by bytes; evaluation entries have priority (see the module)."""

    def __init__(self, owner, device: torch.device, budget: int):
        self.owner = weakref.ref(owner)
        self.device = torch.device(device)
        self.budget = int(budget)
        self.entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self.bytes = 0
        self.train_bytes = 0

    def get(self, key: tuple) -> tuple[torch.Tensor, ...] | None:
        entry = self.entries.get(key)
        return None if entry is None else entry.tensors

    def put(self, key: tuple, tensors: tuple[torch.Tensor, ...], evaluation: bool) -> bool:
        """Store `tensors` (per-image, owned) unless they do not fit; evaluation entries may evict training
        ones, oldest first. Returns whether they were stored."""
        if key in self.entries:
            return True
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        if self.bytes + nbytes > self.budget:
            if not evaluation or self.bytes - self.train_bytes + nbytes > self.budget:
                return False
            for old in [k for k, e in self.entries.items() if not e.evaluation]:
                if self.bytes + nbytes <= self.budget:
                    break
                self._drop(old)
        self.entries[key] = _Entry(tensors, nbytes, evaluation)
        self.bytes += nbytes
        if not evaluation:
            self.train_bytes += nbytes
        return True

    def _drop(self, key: tuple) -> None:
        entry = self.entries.pop(key)
        self.bytes -= entry.nbytes
        if not entry.evaluation:
            self.train_bytes -= entry.nbytes


# One per process: the frozen VLSM it belongs to is kept the same way (one per process).
_CACHE: FeatureCache | None = None


def _process_cache(owner, device: torch.device, budget: int) -> FeatureCache:
    global _CACHE
    cache = _CACHE
    if cache is None or cache.owner() is not owner or cache.device != device or cache.budget != budget:
        _CACHE = cache = FeatureCache(owner, device, budget)  # other weights/device/bound: start afresh
    return cache


def clear() -> None:
    """Drop the process's cache (tests, benchmarks)."""
    global _CACHE
    _CACHE = None


@dataclass
class Session:
    """One trial's use of the process cache, with its counters (per epoch and per trial)."""

    cache: FeatureCache
    pooled: bool  # the learner reads the pooled embedding (CoCoOp) too
    dtype: torch.dtype | None  # autocast dtype, or None: stored as computed
    counts: dict = field(default_factory=lambda: collections.Counter())
    total: dict = field(default_factory=lambda: collections.Counter())

    def image_side(self, model, pixel_values: torch.Tensor, image_ids) -> tuple[torch.Tensor, ...] | None:
        """The adapter's image side for this batch: cached rows where there are any, the misses computed in
        one pass (and stored when the image is un-augmented). None when no image of the batch has an id."""
        if not image_ids or not any(image_ids):
            return None
        evaluation = not model.training
        size = int(pixel_values.shape[-1])
        # Grad mode in the key: some CPU kernels round differently without it (train reads train entries).
        keys = [(size, self.pooled, self.dtype, torch.is_grad_enabled(), i) if i else None for i in image_ids]
        found = [self.cache.get(k) if k is not None else None for k in keys]
        miss = [i for i, f in enumerate(found) if f is None]
        self.counts["lookups"] += len(keys)
        self.counts["hits"] += len(keys) - len(miss)
        # In the caller's grad mode, as the un-cached forward would run it (no graph: the VLSM is frozen).
        cacheable = [i for i in miss if keys[i] is not None]
        for i in cacheable:  # one at a time: the same bits in every trial, cached or not (module docstring)
            # A clone: an output may be a view of a larger tensor, which the cache would keep alive.
            found[i] = tuple(self._store_dtype(t[0]).clone() for t in
                             model.vlsm.image_side(pixel_values[i:i + 1], pooled=self.pooled))
            self.cache.put(keys[i], found[i], evaluation)
        augmented = [i for i in miss if keys[i] is None]
        if augmented:
            sub = pixel_values if len(augmented) == len(keys) else pixel_values[augmented]
            computed = tuple(self._store_dtype(t) for t in model.vlsm.image_side(sub, pooled=self.pooled))
            if len(augmented) == len(keys):
                return computed
            for j, i in enumerate(augmented):
                found[i] = tuple(t[j] for t in computed)
        return tuple(torch.stack([f[k] for f in found]) for k in range(len(found[0])))

    def _store_dtype(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    def metrics(self) -> dict[str, float]:
        """Hit rate of the lookups since the last call (NaN without any), the cache's size, and the bytes
        per cached image; the counts are then added to the trial's total."""
        c = self.counts
        self.total.update(c)
        out = {"feature_cache_hit_rate": c["hits"] / c["lookups"] if c["lookups"] else float("nan"),
               "feature_cache_mb": self.cache.bytes / 2**20,
               "feature_cache_images": len(self.cache.entries),
               "feature_cache_bytes_per_image": self.cache.bytes / max(len(self.cache.entries), 1)}
        self.counts = collections.Counter()
        return out

    def trial_hit_rate(self) -> float:
        t = self.total + self.counts
        return t["hits"] / t["lookups"] if t["lookups"] else float("nan")


def attach(model, setting, device: torch.device, amp_dtype: torch.dtype | None) -> Session | None:
    """Give `model` (a `PromptedVLSM`) a cache session for this trial when its learner leaves the image
    encoder alone and the adapter exposes its image side; sets and returns `model.feature_cache`."""
    session = None
    budget = budget_bytes(setting, torch.device(device))
    if budget > 0 and getattr(model, "frozen_image_side", False):
        cache = _process_cache(model.vlsm, torch.device(device), budget)
        pooled = bool(model.learner is not None and model.learner.needs_image_features)
        session = Session(cache, pooled, amp_dtype)
    model.feature_cache = session
    return session
