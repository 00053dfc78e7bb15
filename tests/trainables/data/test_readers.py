"""Readers, samples, augmentation, cache and the errors for bad files (synthetic data; Kvasir mini if present)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import CACHE, IMAGENET_MEAN, IMAGENET_STD, DataError, build_dataset, load_card
from trainables.data.readers import decode_image, decode_mask
from trainables.data.synthetic import make_synthetic

KVASIR_MINI = Path(__file__).resolve().parents[4] / "shared" / "data/kvasir_seg_mini"
S = 64


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    return {name: make_synthetic(name, base / name, counts=(6, 3, 3)) for name in ("mini_polyp", "mini_skin",
                                                                                    "mini_echo")}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _sample_ok(sample, size):
    assert sample["image"].shape == (3, size, size) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (1, size, size) and sample["mask"].dtype == torch.float32
    assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    assert isinstance(sample["prompt"], str) and sample["prompt"].endswith(".")
    assert isinstance(sample["index"], int)
    h, w = sample["original_size"]
    assert isinstance(h, int) and isinstance(w, int) and isinstance(sample["name"], str)


@pytest.mark.parametrize("name", ["mini_polyp", "mini_skin", "mini_echo"])
def test_synthetic_samples_follow_the_contract(mini, name):
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        ds = build_dataset(name, mini[name], split, S, IMAGENET_MEAN, IMAGENET_STD)
        per_image = 3 if name == "mini_echo" else 1
        assert len(ds) == n * per_image and ds.augment == (split == "train")
        for i in range(len(ds)):
            _sample_ok(ds[i], S)
        assert ds[0]["original_size"] == (112, 112)
    val = build_dataset(name, mini[name], "val", S, IMAGENET_MEAN, IMAGENET_STD)
    # ImageNet normalisation: (x/255 - mean)/std, so a mid-grey pixel is near 0 and values span about [-2, 2.7]
    img = val[0]["image"]
    assert -2.2 < img.min() and img.max() < 2.7 and img.std() > 0.05
    assert 0 < val[0]["mask"].mean() < 0.9


def test_multiclass_images_give_one_binary_sample_per_structure(mini):
    ds = build_dataset("mini_echo", mini["mini_echo"], "val", S, IMAGENET_MEAN, IMAGENET_STD)
    first = [ds[i] for i in range(3)]
    assert [s["name"] for s in first] == ["masks/val_0000_lv.png", "masks/val_0000_myo.png", "masks/val_0000_la.png"]
    assert torch.equal(first[0]["image"], first[1]["image"])  # same image, different masks and prompts
    masks = torch.stack([s["mask"] for s in first])
    assert masks.sum(0).max() == 1  # the three structures do not overlap
    assert [s["prompt"] for s in first] == ["Left ventricular cavity of the heart.", "Myocardium of the heart.",
                                            "Left atrium cavity of the heart."]


def test_list_prompts_are_sampled_at_train_and_fixed_at_eval(mini):
    train = build_dataset("mini_echo", mini["mini_echo"], "train", S, IMAGENET_MEAN, IMAGENET_STD)

    def prompt(epoch):
        train.set_epoch(epoch)
        return train[0]["prompt"]

    seen = {prompt(e) for e in range(40)}
    assert [prompt(e) for e in range(10)] == [prompt(e) for e in range(10)]  # drawn per (seed, epoch, index)
    assert seen == {"Left ventricular cavity of the heart.", "Left ventricular cavity in the synthetic ultrasound."}
    val = build_dataset("mini_echo", mini["mini_echo"], "val", S, IMAGENET_MEAN, IMAGENET_STD)
    assert {val[0]["prompt"] for _ in range(20)} == {"Left ventricular cavity of the heart."}
    assert val.prompts[:3] == [val[i]["prompt"] for i in range(3)]


def test_augmentation_is_train_only_seeded_and_keeps_masks_binary(mini):
    root = mini["mini_polyp"]
    val = build_dataset("mini_polyp", root, "val", S, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(val[0]["image"], val[0]["image"])  # no randomness at evaluation
    plain = build_dataset("mini_polyp", root, "train", S, IMAGENET_MEAN, IMAGENET_STD, augment=False)

    def draws(seed):  # sample 0 in each of 30 epochs
        train = build_dataset("mini_polyp", root, "train", S, IMAGENET_MEAN, IMAGENET_STD, seed=seed)
        out = []
        for epoch in range(30):
            train.set_epoch(epoch)
            out.append(train[0])
        return out

    a, b, c = draws(1), draws(1), draws(2)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))  # same seed -> same draws
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(a, c))
    changed = sum(not torch.equal(x["image"], plain[0]["image"]) for x in a)
    assert 3 <= changed <= 27  # Affine p 0.2 and brightness/contrast p 0.2 -> about 36 % of draws
    for x in a:
        assert set(x["mask"].unique().tolist()) <= {0.0, 1.0}


def test_resize_matches_albumentations_resize():
    import albumentations as A
    import cv2

    from trainables.data.transforms import resize_image, resize_mask

    rng = np.random.default_rng(0)
    image, mask = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 2, (37, 53), dtype=np.uint8)
    ref = A.Resize(S, S, interpolation=cv2.INTER_CUBIC)(image=image, mask=mask)
    assert np.array_equal(resize_image(image, S), ref["image"]) and np.array_equal(resize_mask(mask, S), ref["mask"])


def test_cache_is_shared_by_dataset_objects_over_the_same_files(mini):
    CACHE.clear()
    root = mini["mini_skin"]
    first = build_dataset("mini_skin", root, "test", S, IMAGENET_MEAN, IMAGENET_STD)
    [first[i] for i in range(len(first))]
    assert CACHE.misses == 2 * len(first) and CACHE.hits == 0
    second = build_dataset("mini_skin", root, "test", S, IMAGENET_MEAN, IMAGENET_STD)
    [second[i] for i in range(len(second))]
    assert CACHE.hits == 2 * len(second)  # nothing decoded twice
    other_size = build_dataset("mini_skin", root, "test", S + 8, IMAGENET_MEAN, IMAGENET_STD)
    assert other_size[0]["image"].shape[-1] == S + 8  # a different size is a different key


def test_cache_notices_an_edited_file(tmp_path, mini):
    root = _copy(mini["mini_polyp"], tmp_path / "p")
    ds = build_dataset("mini_polyp", root, "val", S, IMAGENET_MEAN, IMAGENET_STD)
    before = ds[0]["mask"].sum()
    Image.fromarray(np.zeros((112, 112), np.uint8)).save(root / "masks/val_0000.png")
    assert before > 0 and ds[0]["mask"].sum() == 0


@pytest.mark.skipif(not KVASIR_MINI.is_dir(), reason="kvasir_seg_mini not available")
def test_kvasir_mini_real_samples():
    manifest = {line.split(",")[1]: line.split(",") for line in (KVASIR_MINI / "manifest.csv").read_text().splitlines()[1:]}
    ds = build_dataset("kvasir", KVASIR_MINI, "train", 352, IMAGENET_MEAN, IMAGENET_STD, augment=False)
    assert len(ds) == 40 and ds.source.endswith("anns/train.json")
    sample = ds[0]
    _sample_ok(sample, 352)
    name = sample["name"].removeprefix("masks/")
    _, _, width, height, fg, _ = manifest[name]
    assert sample["original_size"] == (int(height), int(width))
    assert sample["prompt"] == "polyp."
    # the JPEG mask thresholded at > 127 has the manifest's foreground fraction (at original size)
    assert sample["index"] == 0 and abs(ds.original_mask(0).mean() - float(fg)) < 1e-3
    assert abs(sample["mask"].mean().item() - float(fg)) < 0.01  # nearest resize keeps it


@pytest.mark.skipif(not KVASIR_MINI.is_dir(), reason="kvasir_seg_mini not available")
def test_card_annotations_mode_uses_the_shipped_split_and_names_missing_files():
    with pytest.raises(DataError, match=r"kvasir train: .*images/cju\w+\.jpg: image not found .*and \d+ more missing"):
        build_dataset("kvasir", KVASIR_MINI, "train", 352, IMAGENET_MEAN, IMAGENET_STD, annotations="card")


# --------------------------------------------------------------------------------------------------
# Image formats and bad files


def test_greyscale_rgba_palette_and_16bit_images(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "w.png")  # 16-bit greyscale PNG
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    for name in ("g", "a", "w", "p"):
        img = decode_image(tmp_path / f"{name}.png")
        assert img.shape == (20, 30, 3) and img.dtype == np.uint8, name
    assert np.array_equal(decode_image(tmp_path / "g.png")[..., 1], grey)
    assert np.array_equal(decode_image(tmp_path / "w.png")[..., 0], grey)  # 16 bit scaled back by the top byte
    assert np.array_equal(decode_image(tmp_path / "a.png"), rgba[..., :3])  # alpha dropped
    mask16 = (grey > 127).astype(np.uint16) * 65535
    Image.fromarray(mask16).save(tmp_path / "m16.png")
    assert np.array_equal(decode_mask(tmp_path / "m16.png", 127, 0.01), (grey > 127).astype(np.uint8))
    Image.fromarray(np.stack([(grey > 127) * 255] * 3, -1).astype(np.uint8)).save(tmp_path / "mrgb.png")
    assert np.array_equal(decode_mask(tmp_path / "mrgb.png", 127, 0.01), (grey > 127).astype(np.uint8))


def test_a_greyscale_dataset_reads_as_three_channels(mini):
    ds = build_dataset("mini_echo", mini["mini_echo"], "val", S, IMAGENET_MEAN, IMAGENET_STD)
    assert Image.open(ds.entries[0].image).mode == "L"
    raw = ds.load(0)[0]
    assert raw.shape == (S, S, 3) and np.array_equal(raw[..., 0], raw[..., 2])


def _first_entry(root: Path, split="val"):
    return json.loads((root / "anns" / f"{split}.json").read_text())


def _write_anns(root: Path, rows, split="val"):
    (root / "anns" / f"{split}.json").write_text(json.dumps(rows))


def test_bad_sample_errors_name_the_file_and_the_fix(tmp_path, mini):
    root = _copy(mini["mini_polyp"], tmp_path / "bad")
    rows = _first_entry(root)
    mask0, img1, mask2 = root / "masks" / rows[0]["mask_name"], root / "images" / rows[1]["img_name"], \
        root / "masks" / rows[2]["mask_name"]
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(mask0)  # wrong size
    img1.write_bytes(img1.read_bytes()[:200])  # truncated
    Image.fromarray(np.full((112, 112), 128, np.uint8)).save(mask2)  # grey, not binary
    ds = build_dataset("mini_polyp", root, "val", S, IMAGENET_MEAN, IMAGENET_STD, cache=False)
    with pytest.raises(DataError, match=r"mini_polyp val sample 0 .*mask .*val_0000.png is 60x50 \(WxH\) but its "
                                        r"image .* is 112x112; masks must have their image's size; run `tunevlseg "
                                        r"data check mini_polyp"):
        ds[0]
    with pytest.raises(DataError, match=r"image .*val_0001.png cannot be read .*truncated or corrupt"):
        ds[1]
    with pytest.raises(DataError, match=r"mask .*val_0002.png is not binary: 100.0% of pixels are between"):
        ds[2]
    Image.fromarray((np.arange(112 * 112).reshape(112, 112) % 2).astype(np.uint8)).save(mask2)
    with pytest.raises(DataError, match=r"val_0002.png holds values \[0, 1\], not 0/255; write foreground as 255"):
        ds[2]
    assert isinstance(DataError("x"), ValueError)


@pytest.mark.parametrize("edit, match", [
    (lambda rows: rows + [rows[0]], r"duplicate entry val_0000.png / masks/val_0000.png \(entries 0 and 3\); remove one"),
    (lambda rows: [{**rows[0], "img_name": "../../etc/passwd"}], r"entry 0: img_name '../../etc/passwd' escapes the "
                                                                 r"dataset root"),
    (lambda rows: [{**rows[0], "mask_name": "/abs/m.png"}], r"mask_name '/abs/m.png' escapes the dataset root"),
    (lambda rows: [], r"split val is empty"),
    (lambda rows: [{"img_name": "x.png"}], r"entry 0: needs `img_name` and `mask_name`"),
    (lambda rows: [{**rows[0], "prompts": {"p0": ""}}], r"no prompt 'p1' in `prompts`"),
    (lambda rows: [{**rows[0], "img_name": "gone.png"}], r"images/gone.png: image not found"),
])
def test_bad_annotation_files_are_refused_at_build_time(tmp_path, mini, edit, match):
    root = _copy(mini["mini_polyp"], tmp_path / "r")
    _write_anns(root, edit(_first_entry(root)))
    with pytest.raises(DataError, match=match):
        build_dataset("mini_polyp", root, "val", S, IMAGENET_MEAN, IMAGENET_STD)


def test_missing_root_annotations_and_split_names(tmp_path, mini):
    with pytest.raises(FileNotFoundError, match=r"dataset root .*nowhere not found"):
        build_dataset("mini_polyp", tmp_path / "nowhere", "val", S, IMAGENET_MEAN, IMAGENET_STD)
    root = _copy(mini["mini_polyp"], tmp_path / "r")
    (root / "anns/val.json").unlink()
    with pytest.raises(DataError, match=r"mini_polyp val: no annotation file: expected .*anns/val.json"):
        build_dataset("mini_polyp", root, "val", S, IMAGENET_MEAN, IMAGENET_STD)
    (root / "anns/test.json").write_text("[{")
    with pytest.raises(DataError, match=r"anns/test.json is not valid JSON"):
        build_dataset("mini_polyp", root, "test", S, IMAGENET_MEAN, IMAGENET_STD)
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown split 'valid'; allowed: train, val, test"):
        build_dataset("mini_polyp", root, "valid", S, IMAGENET_MEAN, IMAGENET_STD)


def test_card_path_and_known_duplicates(tmp_path, mini):
    root = _copy(mini["mini_polyp"], tmp_path / "r")
    rows = _first_entry(root)
    _write_anns(root, rows + [rows[0]])
    card = tmp_path / "dup.yaml"
    text = Path(load_card("mini_polyp").path).read_text()
    card.write_text(text + "known_duplicates: [val_0000.png]\n")
    ds = build_dataset(str(card), root, "val", S, IMAGENET_MEAN, IMAGENET_STD)
    assert len(ds) == len(rows) + 1  # kept, as the paper's BKAI/ISIC files are


def test_dataloader_batches(mini):
    ds = build_dataset("mini_polyp", mini["mini_polyp"], "train", S, IMAGENET_MEAN, IMAGENET_STD)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["image"].shape == (4, 3, S, S) and batch["mask"].shape == (4, 1, S, S)
    assert len(batch["prompt"]) == 4 and len(batch["name"]) == 4
