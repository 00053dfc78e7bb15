"""`tunevlseg data check / prepare / make-synthetic / list` on real (Kvasir mini) and synthetic trees."""

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.commands import data as data_cmd
from trainables.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset
from trainables.data.prepare import VOC_CLASSES, voc_palette
from trainables.data.synthetic import make_synthetic

KVASIR_MINI = Path(__file__).resolve().parents[4] / "shared" / "data/kvasir_seg_mini"


def cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    data_cmd.add_arguments(parser)
    return data_cmd.run(parser.parse_args([str(a) for a in argv]))


def test_data_command_is_registered_and_lists_cards(capsys):
    from benchmark.cli import COMMAND_MODULES

    assert "benchmark.commands.data" in COMMAND_MODULES
    assert cli("list") == 0
    out = capsys.readouterr().out
    assert "kvasir" in out and "800/100/100" in out and "34723/6005/6005*" in out


@pytest.mark.skipif(not KVASIR_MINI.is_dir(), reason="kvasir_seg_mini not available")
def test_check_passes_on_kvasir_mini_in_subset_mode_and_enforces_counts_otherwise(capsys):
    assert cli("check", "kvasir", "--root", KVASIR_MINI, "--subset") == 0
    out = capsys.readouterr().out
    assert "OK: no problems" in out and "train  40       40      800       0" in out
    assert cli("check", "kvasir", "--root", KVASIR_MINI) == 1
    out = capsys.readouterr().out
    assert "train has 40 entries, the card expects 800 (paper Table 1)" in out


@pytest.mark.skipif(not KVASIR_MINI.is_dir(), reason="kvasir_seg_mini not available")
def test_check_names_every_problem_on_a_corrupted_copy(tmp_path, capsys):
    root = Path(shutil.copytree(KVASIR_MINI, tmp_path / "kvasir"))
    anns = {s: json.loads((root / f"anns/{s}.json").read_text()) for s in ("train", "val", "test")}
    train, val = anns["train"], anns["val"]
    (root / "images" / train[0]["img_name"]).unlink()  # missing image
    trunc = root / "images" / train[1]["img_name"]
    trunc.write_bytes(trunc.read_bytes()[:1000])  # truncated JPEG
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(root / "masks" / train[2]["mask_name"], "JPEG")  # size
    Image.fromarray(np.full((529, 622), 128, np.uint8)).save(root / "masks" / train[3]["mask_name"], "JPEG")
    val.append({**val[0], "img_name": "../../outside.jpg"})  # escapes the root
    val.append(dict(val[1]))  # duplicate
    val.append(dict(train[5]))  # leak: a train image also in val (and not in the card's val split)
    (root / "anns/val.json").write_text(json.dumps(val))
    (root / "anns/test.json").write_text("[]")  # empty split

    assert cli("check", "kvasir", "--root", root, "--subset") == 1
    out = capsys.readouterr().out
    expected = [
        f"images/{train[0]['img_name']}: image not found",
        f"images/{train[1]['img_name']}: image cannot be read (image file is truncated",
        f"masks/{train[2]['mask_name']}: mask is 20x10 (WxH) but its image",
        f"masks/{train[3]['mask_name']}: mask is not binary: 100.0% of pixels",
        "anns/val.json: entry 12: img_name '../../outside.jpg' escapes the dataset root",
        f"anns/val.json: duplicate entry {val[1]['img_name']}",
        f"anns/val.json: entry {train[5]['img_name']} / masks/{train[5]['mask_name']} is not in the card's val split",
        f"images/{train[5]['img_name']}: image is in both train and val (split leak)",
        "anns/test.json: split test is empty",
    ]
    for line in expected:
        assert line in out, line
    assert f"{len(expected)} problems:" in out


def test_check_on_synthetic_data_and_no_decode_mode(tmp_path, capsys):
    root = make_synthetic("mini_echo", tmp_path / "mini_echo")
    assert cli("check", "mini_echo", "--root", root) == 0
    assert "OK: no problems" in capsys.readouterr().out
    (root / "masks/val_0002_myo.png").unlink()
    assert cli("check", "mini_echo", "--root", root, "--no-decode") == 1
    assert "val_0002_myo.png: mask not found (listed for sample masks/val_0002_myo.png)" in capsys.readouterr().out


def test_make_synthetic_is_deterministic_and_idempotent(tmp_path, capsys):
    assert cli("make-synthetic", "--dst", tmp_path / "a", "--name", "mini_skin") == 0
    assert cli("make-synthetic", "--dst", tmp_path / "b", "--name", "mini_skin") == 0

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a, b = digest(tmp_path / "a/mini_skin"), digest(tmp_path / "b/mini_skin")
    assert a == b and len(a) == 2 * 80 + 3 + 1
    before = (tmp_path / "a/mini_skin/images/train_0000.png").stat().st_mtime_ns
    assert cli("make-synthetic", "--dst", tmp_path / "a", "--name", "mini_skin") == 0
    assert (tmp_path / "a/mini_skin/images/train_0000.png").stat().st_mtime_ns == before  # skipped
    other = make_synthetic("mini_skin", tmp_path / "c", seed=1, counts=(2, 1, 1))
    assert digest(other)["images/train_0000.png"] != a["images/train_0000.png"]


# --------------------------------------------------------------------------------------------------
# prepare


def _png(path: Path, array: np.ndarray, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_prepare_cityscapes_binarises_label_ids_idempotently(tmp_path, capsys):
    src = tmp_path / "cs"
    ids = {"train": np.array([[7, 7, 26, 26], [0, 0, 19, 3]], np.uint8),  # road, car, traffic light, void
           "val": np.array([[11, 11, 11, 24], [7, 7, 1, 1]], np.uint8)}  # building, person, road, ego vehicle
    for split, label in ids.items():
        stem = f"aachen_000000_00001{9 if split == 'train' else 8}"
        _png(src / f"gtFine/{split}/aachen/{stem}_gtFine_labelIds.png", np.kron(label, np.ones((4, 4), np.uint8)))
        _png(src / f"leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png", np.full((8, 16, 3), 90, np.uint8))
    dst = tmp_path / "out"
    assert cli("prepare", "cityscapes", "--src", src, "--dst", dst) == 0
    assert "{'train': 3, 'val': 3}" in capsys.readouterr().out
    train = sorted(p.relative_to(dst).as_posix() for p in (dst / "annotations/training").rglob("*.png"))
    assert train == ["annotations/training/car/aachen_000000_000019.png",
                     "annotations/training/road/aachen_000000_000019.png",
                     "annotations/training/traffic light/aachen_000000_000019.png"]
    road = np.asarray(Image.open(dst / "annotations/training/road/aachen_000000_000019.png"))
    assert road.dtype == np.uint8 and set(np.unique(road)) == {0, 255} and (road == 255).sum() == 2 * 16
    mtimes = {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")}
    assert cli("prepare", "cityscapes", "--src", src, "--dst", dst) == 0  # second run: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")} == mtimes

    ds = build_dataset("cityscapes", dst, "train", 32, IMAGENET_MEAN, IMAGENET_STD)
    assert sorted(s["prompt"] for s in ds) == ["car.", "road.", "traffic light."]
    test = build_dataset("cityscapes", dst, "test", 32, IMAGENET_MEAN, IMAGENET_STD)
    assert not test.augment and [e.name for e in test.entries] == \
        [e.name for e in build_dataset("cityscapes", dst, "val", 32, IMAGENET_MEAN, IMAGENET_STD).entries]
    assert cli("check", "cityscapes", "--root", dst, "--subset") == 0
    assert "same files as val" in capsys.readouterr().out


def test_prepare_voc_decodes_the_palette(tmp_path, capsys):
    voc = tmp_path / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    pal = voc_palette()
    idx = {"2007_000032": np.array([[0, 1, 1], [15, 255, 0]], np.uint8),  # aeroplane, person, boundary
           "2007_000033": np.array([[11, 11, 0], [0, 0, 20]], np.uint8)}  # diningtable, tvmonitor
    for sid, label in idx.items():
        big = np.kron(label, np.ones((3, 3), np.uint8))
        img = Image.fromarray(big, "P")
        img.putpalette(pal.flatten().tolist())
        (voc / "SegmentationClass").mkdir(exist_ok=True)
        img.save(voc / f"SegmentationClass/{sid}.png")
        (voc / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(np.full((6, 9, 3), 120, np.uint8)).save(voc / f"JPEGImages/{sid}.jpg")
    dst = tmp_path / "out"
    assert cli("prepare", "voc", "--src", tmp_path, "--dst", dst) == 0
    names = sorted(p.relative_to(dst).as_posix() for p in (dst / "annotations").rglob("*.png"))
    assert names == ["annotations/training/aeroplane/2007_000032.png", "annotations/training/person/2007_000032.png",
                     "annotations/validation/diningtable/2007_000033.png",
                     "annotations/validation/tvmonitor/2007_000033.png"]
    person = np.asarray(Image.open(dst / "annotations/training/person/2007_000032.png")) > 0
    assert person.sum() == 9 and person[3:6, 0:3].all()  # the boundary colour (255) is not a class
    ds = build_dataset("voc", dst, "test", 16, IMAGENET_MEAN, IMAGENET_STD)
    assert [s["prompt"] for s in ds] == ["diningtable.", "tvmonitor."] and ds[0]["original_size"] == (6, 9)
    assert len(VOC_CLASSES) == 20


def test_prepare_busi_or_merges_multiple_masks(tmp_path, capsys):
    src = tmp_path / "Dataset_BUSI_with_GT"
    a = np.zeros((6, 6), np.uint8)
    a[0:2, 0:2] = 255
    b = np.zeros((6, 6), np.uint8)
    b[4:6, 4:6] = 255
    _png(src / "benign/benign (12).png", np.full((6, 6, 3), 50, np.uint8))
    _png(src / "benign/benign (12)_mask.png", a)
    _png(src / "benign/benign (12)_mask_1.png", b)
    _png(src / "normal/normal (3).png", np.full((6, 6, 3), 50, np.uint8))
    _png(src / "normal/normal (3)_mask.png", np.zeros((6, 6), np.uint8))
    dst = tmp_path / "busi"
    assert cli("prepare", "busi", "--src", tmp_path, "--dst", dst) == 0
    merged = np.asarray(Image.open(dst / "masks/12_benign.png"))
    assert np.array_equal(merged, a | b)
    assert (dst / "images/12_benign.png").is_file() and not np.asarray(Image.open(dst / "masks/3_normal.png")).any()
    assert "'multi_mask': 1" in capsys.readouterr().out
    (src / "normal/normal (3)_mask.png").unlink()
    shutil.rmtree(dst)
    assert cli("prepare", "busi", "--src", src, "--dst", dst) == 2  # incomplete download: one-line error
    assert "normal (3).png has no 'normal (3)_mask.png'" in capsys.readouterr().err


def test_augmentation_draws_do_not_depend_on_workers_or_process(tmp_path):
    # Draws are a function of (seed, epoch, index): persistent workers see set_epoch through shared memory,
    # and a trial resumed in a new process at epoch e sees what an uninterrupted one saw.
    root = make_synthetic("mini_polyp", tmp_path / "p", counts=(24, 1, 1))

    def epochs(num_workers, first=0):
        ds = build_dataset("mini_polyp", root, "train", 32, IMAGENET_MEAN, IMAGENET_STD, seed=5)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=num_workers,
                                             persistent_workers=num_workers > 0)
        out = []
        for epoch in range(first, 3):
            ds.set_epoch(epoch)
            out.append(torch.cat([b["image"] for b in loader]))
        return out

    inline, workers, resumed = epochs(0), epochs(2), epochs(0, first=2)
    assert all(torch.equal(a, b) for a, b in zip(inline, workers))
    assert torch.equal(resumed[0], inline[2])
    assert not torch.equal(inline[0], inline[1])  # a new epoch draws anew
    plain = build_dataset("mini_polyp", root, "train", 32, IMAGENET_MEAN, IMAGENET_STD, augment=False)
    changed = [not torch.equal(x, plain[i]["image"]) for i, x in enumerate(inline[0])]
    assert 0 < sum(changed) < len(changed)  # each sample has its own draw (p 0.2 per transform)


def test_camus_layout_reads_val_from_the_training_folder_and_test_from_the_testing_folder(tmp_path, capsys):
    from trainables.data.prepare import camus_entries, write_mask

    root = tmp_path / "camus"
    rng = np.random.default_rng(0)
    for folder, value in (("train", 40), ("test", 200)):
        for row in camus_entries([1]):
            _png(root / "images" / folder / row["img_name"], np.full((20, 16), value, np.uint8))  # greyscale
            write_mask(root / "masks" / folder / row["mask_name"], rng.random((20, 16)) > 0.5)
    (root / "anns").mkdir()
    for split in ("val", "test"):  # the medvlsm files list the same names for val and test
        (root / "anns" / f"{split}.json").write_text(json.dumps(camus_entries([1])))
    val = build_dataset("camus", root, "val", 16, IMAGENET_MEAN, IMAGENET_STD)
    test = build_dataset("camus", root, "test", 16, IMAGENET_MEAN, IMAGENET_STD)
    assert len(val) == len(test) == 12 and val.entries[0].image.parent.name == "train"
    assert test.entries[0].image.parent.name == "test" and val[0]["image"].mean() < test[0]["image"].mean()
    assert val[1]["prompt"] == "Myocardium of the heart." and val[0]["original_size"] == (20, 16)
    assert cli("check", "camus", "--root", root, "--split", "val", "--split", "test", "--subset") == 0
    out = capsys.readouterr().out
    assert "OK: no problems" in out and "leak" not in out  # same names, different folders
