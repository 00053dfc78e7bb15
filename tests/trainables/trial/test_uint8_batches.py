"""uint8 samples normalised on the device equal the float32 samples normalised by albumentations."""

import pytest
import torch

from trainables.batches import _pixel_stats, collate, device_images, forward_batch
from trainables.data import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, build_dataset, make_synthetic
from trainables.trial import DataConfig, TrialConfig, build_datasets

S = 48  # the tiny CLIPSeg's input size


@pytest.fixture(scope="module")
def polyp(tmp_path_factory):
    return make_synthetic("mini_polyp", tmp_path_factory.mktemp("u8") / "mini_polyp", counts=(6, 3, 3))


def _pair(root, split, augment, mean, std, size=S):
    return [build_dataset("mini_polyp", root, split, size, mean, std, augment=augment, normalize=normalize)
            for normalize in (True, False)]


@pytest.mark.parametrize("augment, mean, std", [(False, IMAGENET_MEAN, IMAGENET_STD), (True, CLIP_MEAN, CLIP_STD)])
def test_uint8_samples_normalised_on_the_device_equal_float_samples(polyp, augment, mean, std):
    floats, uint8s = _pair(polyp, "train", augment, mean, std)
    draws = []
    for epoch in range(6):  # both datasets draw from (seed, epoch, index)
        floats.set_epoch(epoch), uint8s.set_epoch(epoch)
        draws += [(floats[i], uint8s[i]) for i in range(6)]
    plain = build_dataset("mini_polyp", polyp, "train", S, mean, std, augment=False)
    changed = 0
    for f, u in draws:
        assert u["image"].dtype == torch.uint8 and u["image"].shape == (3, S, S)
        assert u["mask"].dtype == torch.uint8 and u["mask"].shape == (1, S, S)
        assert set(u["mask"].unique().tolist()) <= {0, 1}
        assert torch.equal(u["mask"].float(), f["mask"]) and u["prompt"] == f["prompt"]
        normalised = device_images(u["image"][None], torch.device("cpu"), mean, std)[0]
        assert normalised.dtype == torch.float32
        assert (normalised - f["image"]).abs().max() <= 1e-6
        changed += not torch.equal(f["image"], plain[f["index"]]["image"])
    assert (changed > 0) == augment  # the augmented case really compared augmented pixels


def test_uint8_samples_are_copies_not_views_of_the_cache(polyp):
    ds = build_dataset("mini_polyp", polyp, "val", S, IMAGENET_MEAN, IMAGENET_STD, normalize=False)
    first = ds[0]
    reference = first["image"].clone(), first["mask"].clone()
    first["image"].zero_(), first["mask"].fill_(7)
    again = ds[0]
    assert torch.equal(again["image"], reference[0]) and torch.equal(again["mask"], reference[1])


def test_device_statistics_are_made_once_and_other_dtypes_are_refused():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    device_images(images, torch.device("cpu"), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    misses = _pixel_stats.cache_info().misses
    out = device_images(images, torch.device("cpu"), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert _pixel_stats.cache_info().misses == misses
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean.double()) / std.double()
    assert torch.allclose(out.double(), expected, atol=1e-6)
    already = torch.randn(2, 3, 4, 4)
    assert device_images(already, torch.device("cpu"), (0.1,) * 3, (0.4,) * 3) is already  # passed through
    with pytest.raises(TypeError, match="uint8 .* or float"):
        device_images(images.long(), torch.device("cpu"), (0.1,) * 3, (0.4,) * 3)


def test_forward_batch_gives_the_same_logits_for_float_and_uint8_batches(polyp):
    from trainables.model import build_model

    model = build_model({"vlsm": "clipseg", "vlsm_config": "tiny", "learner": "coop",
                         "learner_config": {"context_init": None}, "seed": 0}).eval()
    spec = model.spec
    assert spec.image_size == S
    floats, uint8s = _pair(polyp, "val", False, spec.mean, spec.std)
    batch_f = collate([floats[i] for i in range(3)])
    batch_u = collate([uint8s[i] for i in range(3)])
    assert batch_u["image"].dtype == torch.uint8 and batch_f["image"].dtype == torch.float32
    with torch.no_grad():
        logits_f, mask_f = forward_batch(model, batch_f, torch.device("cpu"))
        logits_u, mask_u = forward_batch(model, batch_u, torch.device("cpu"))
    assert mask_u.dtype == torch.float32 and torch.equal(mask_u, mask_f)
    assert logits_u.shape == (3, 1, S, S)
    torch.testing.assert_close(logits_u, logits_f, atol=1e-5, rtol=1e-5)


def test_a_trial_builds_uint8_datasets(polyp):
    cfg = TrialConfig(model=None, data=DataConfig(dataset="mini_polyp", root=str(polyp)))

    class Spec:
        image_size, mean, std = S, IMAGENET_MEAN, IMAGENET_STD

    datasets = build_datasets(cfg, Spec)
    assert {s: d.augment for s, d in datasets.items()} == {"train": True, "val": False, "test": False}
    for ds in datasets.values():
        sample = ds[0]
        assert sample["image"].dtype == torch.uint8 and sample["mask"].dtype == torch.uint8
