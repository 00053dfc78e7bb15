"""`data prepare` for BKAI, ClinicDB, ISIC, DFU and CheXlocalize, on small fakes of each download's layout
that use real file names from the shipped split files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmark import cli
from benchmark.commands.data import PREPARE_NAMES
from trainables.data import prepare, prepare_medical
from trainables.data.prepare_medical import rle_counts, rle_decode, split_names
from trainables.data.readers import DataError, decode_mask


def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _rgb(seed, shape=(20, 24)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _subset(monkeypatch, card, n=3):
    pairs = split_names(card)[:n]
    monkeypatch.setattr(prepare_medical, "split_names", lambda name: pairs)
    return pairs


def test_every_preparer_is_offered_by_the_cli():
    assert set(PREPARE_NAMES) == set(prepare.PREPARERS) | set(prepare_medical.PREPARERS)


@pytest.mark.parametrize("card, samples", [("bkai", 1000), ("clinicdb", 612), ("isic", 1279), ("dfu", 2000),
                                           ("chexlocalize", 2177)])
def test_split_names_cover_the_cards_splits(card, samples):
    # Table 1 counts entries; the upstream duplicates and split leaks the cards list are the same files.
    from trainables.data.cards import load_card

    c = load_card(card)
    assert len(split_names(card)) == samples - len(c.known_duplicates) - len(c.known_leaks)


def test_bkai_colour_masks_become_one_polyp_mask(tmp_path, monkeypatch):
    pairs = _subset(monkeypatch, "bkai")
    src = tmp_path / "bkai-igh-neopolyp"
    expected = {}
    for i, (img, mask) in enumerate(pairs):
        _save(src / "train" / "train" / img, _rgb(i), "JPEG")
        colour = np.zeros((20, 24, 3), np.uint8)
        colour[2:8, 2:10] = (255, 0, 0)  # neoplastic
        colour[12:18, 12:20] = (0, 255, 0)  # non-neoplastic
        _save(src / "train_gt" / "train_gt" / mask, colour, "JPEG")
        expected[mask] = colour.max(axis=-1) > 127
    raw = src / "train_gt" / "train_gt" / pairs[0][1]
    with pytest.raises(DataError, match="not binary"):  # why BKAI needs prepare: red is dark in grey
        decode_mask(raw, 127, 0.05)
    counts = prepare_medical.prepare_bkai(src, tmp_path / "out")
    assert counts == {"images written": 3, "masks written": 3, "samples": 3}
    for img, mask in pairs:
        got = decode_mask(tmp_path / "out" / "masks" / mask, 127, 0.0).astype(bool)
        assert (got == expected[mask]).mean() > 0.98  # JPEG noise at the block edges only
        assert got[4, 5] and got[15, 15] and not got[10, 0]
        assert (tmp_path / "out" / "images" / img).read_bytes() == (src / "train" / "train" / img).read_bytes()
    assert prepare_medical.prepare_bkai(src, tmp_path / "out") == {"samples": 3}  # idempotent


def test_clinicdb_tifs_become_the_pngs_the_splits_name(tmp_path, monkeypatch):
    pairs = _subset(monkeypatch, "clinicdb")
    src = tmp_path / "CVC-ClinicDB"
    for i, (img, mask) in enumerate(pairs):
        stem = img.rsplit(".", 1)[0]
        _save(src / "Original" / f"{stem}.tif", _rgb(i), "TIFF")
        m = np.zeros((20, 24), np.uint8)
        m[5:15, 5:15] = 255
        _save(src / "Ground Truth" / f"{stem}.tif", m, "TIFF")
    prepare_medical.prepare_clinicdb(src, tmp_path / "out")
    for i, (img, mask) in enumerate(pairs):
        assert img.endswith(".png")
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "images" / img)), _rgb(i))
        assert decode_mask(tmp_path / "out" / "masks" / mask, 127, 0.0).sum() == 100


@pytest.mark.parametrize("card, layout", [
    ("isic", {"image": "ISBI2016_ISIC_Part1_Training_Data", "mask": "ISBI2016_ISIC_Part1_Training_GroundTruth"}),
    ("dfu", {"image": "DFUC2022_train_images", "mask": "DFUC2022_train_masks"}),
])
def test_isic_and_dfu_files_are_found_by_name_and_missing_ones_are_named(tmp_path, monkeypatch, card, layout):
    pairs = _subset(monkeypatch, card)
    src = tmp_path / "download"
    for i, (img, mask) in enumerate(pairs[:2]):
        _save(src / layout["image"] / img, _rgb(i), "JPEG")
        m = np.zeros((20, 24), np.uint8)
        m[:, :7] = 255
        _save(src / layout["mask"] / mask, m, "PNG")
    with pytest.raises(DataError, match=rf"{card}: 2 file\(s\) named by the split files are not under .*{pairs[2][0]}"):
        getattr(prepare_medical, f"prepare_{card}")(src, tmp_path / "out")
    img, mask = pairs[2]
    _save(src / layout["image"] / img, _rgb(2), "JPEG")
    _save(src / layout["mask"] / mask, np.full((20, 24), 255, np.uint8), "PNG")
    assert getattr(prepare_medical, f"prepare_{card}")(src, tmp_path / "out")["samples"] == 3
    assert decode_mask(tmp_path / "out" / "masks" / pairs[0][1], 127, 0.0).sum() == 20 * 7
    _save(src / "copy" / layout["image"] / img, _rgb(2), "JPEG")  # two copies of the download
    with pytest.raises(DataError, match="2 candidate image files"):
        getattr(prepare_medical, f"prepare_{card}")(src, tmp_path / "out2")


def _rle_encode(mask: np.ndarray) -> str:
    """The test's own encoder, from the format's description: column-major runs starting with 0, then
    5-bit little-endian digits + 48 with a continuation bit; runs from the third on as differences."""
    flat = mask.T.reshape(-1)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = list(np.diff(bounds))
    if flat[0] == 1:
        runs = [0] + runs
    out = []
    for i, run in enumerate(runs):
        x = int(run) - (int(runs[i - 2]) if i > 2 else 0)
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(c + (0x20 if more else 0) + 48))
            if not more:
                break
    return "".join(out)


def test_coco_rle_decoding():
    assert rle_counts("324O") == [3, 2, 4, 1]  # hand-encoded: the last run is stored as 1 - 2 = -1
    # empty masks as they appear in CheXlocalize's published sample (2320 x 2828 and 2022 x 2021 pixels)
    assert rle_counts("PVWX6") == [2320 * 2828] and rle_counts("nefl3") == [2022 * 2021]
    rng = np.random.default_rng(0)
    for shape in [(13, 7), (40, 31)]:
        mask = (rng.random(shape) > 0.6).astype(np.uint8)
        mask[0, 0] = 1
        assert np.array_equal(rle_decode({"size": list(shape), "counts": _rle_encode(mask)}), mask)
    with pytest.raises(DataError, match="damaged"):
        rle_decode({"size": [5, 5], "counts": "324O"})


def test_chexlocalize_images_and_rle_masks(tmp_path, monkeypatch, capsys):
    pairs = _subset(monkeypatch, "chexlocalize", n=4)
    src = tmp_path / "chexlocalize"
    seg: dict = {}
    truth = {}
    for i, (img, mask) in enumerate(pairs):
        patient, study, view = img[: -len(".jpg")].split("_", 2)
        _save(src / "CheXpert" / "valid" / patient / study / f"{view}.jpg", _rgb(i), "JPEG")
        cxr_id = img[: -len(".jpg")]
        pathology = mask[len(cxr_id) + 1 : -len(".png")].replace("_", " ").title()
        m = np.zeros((20, 24), np.uint8)
        m[i : i + 6, 3:12] = 1
        seg.setdefault(cxr_id, {})[pathology] = {"size": [20, 24], "counts": _rle_encode(m)}
        truth[mask] = m
    (src / "gt_segmentations_val.json").write_text(json.dumps(seg))
    assert cli.main(["data", "prepare", "chexlocalize", "--src", str(src), "--dst", str(tmp_path / "out")]) == 0
    assert "next: tunevlseg data check chexlocalize" in capsys.readouterr().out
    for img, mask in pairs:
        assert (tmp_path / "out" / "images" / img).is_file()
        assert np.array_equal(decode_mask(tmp_path / "out" / "masks" / mask, 127, 0.0), truth[mask])
    (src / "gt_segmentations_val.json").write_text("{}")
    with pytest.raises(DataError, match="chexlocalize: 4 file"):
        prepare_medical.prepare_chexlocalize(src, tmp_path / "out3")
