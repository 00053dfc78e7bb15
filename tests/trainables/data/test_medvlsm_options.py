"""Data options for medvlsm's main-line recipe (experiments/medvlsm_e2e_main.yaml): `data.prompt_level` (one run
per prompt level p0..p9) and `data.resize: bilinear_antialias` (torchvision's Resize on a PIL image)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.plan.matrix import build_plan
from benchmark.plan.spec import load_spec
from trainables import trial
from trainables.config import ConfigError
from trainables.data import CACHE, build_dataset, load_card, make_synthetic, readers
from trainables.data.transforms import resize_image, resize_mask
from trainables.trial import TrialConfig

REPO = Path(__file__).resolve().parents[3]
MEAN = STD = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def polyp(tmp_path_factory):
    """A synthetic medvlsm-layout dataset whose annotation files carry levels p0..p2 (p3 in train[0] only)."""
    root = make_synthetic("mini_polyp", tmp_path_factory.mktemp("levels") / "mini_polyp", counts=(4, 2, 2))
    for split in ("train", "val", "test"):
        path = root / "anns" / f"{split}.json"
        rows = json.loads(path.read_text())
        for i, row in enumerate(rows):
            row["prompts"] = {"p0": "", "p1": "polyp", "p2": f"polyp number {i}"}
            if split == "train" and i == 0:
                row["prompts"]["p3"] = "only here"
        path.write_text(json.dumps(rows))
    return root


# --- data.resize -----------------------------------------------------------------------------------------


def test_bilinear_antialias_is_pillows_bilinear_and_averages_what_it_shrinks():
    # Vertical stripes of period 4 (one bright column in four) shrunk 4x: an antialiased filter sees every
    # column and lands near their mean (63.75); cv2's bicubic samples between two dark columns and sees ~none.
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::4] = 255
    aa = resize_image(stripes, 16, "bilinear_antialias")
    assert aa.shape == (16, 16, 3) and aa.dtype == np.uint8 and aa.flags.writeable
    assert np.abs(aa[:, 1:-1].astype(float) - 63.75).max() < 8
    assert resize_image(stripes, 16).max() < 20  # the default, bicubic: aliased
    # what torchvision's Resize([S, S]) does to a PIL image: Image.resize((S, S), BILINEAR)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (53, 71, 3), dtype=np.uint8)
    assert np.array_equal(resize_image(photo, 32, "bilinear_antialias"),
                          np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.BILINEAR)))


def test_the_masks_take_pillows_nearest_pixel_under_bilinear_antialias():
    # 1 x 4 -> 1 x 2: Pillow takes the pixel under each output pixel's centre (source columns 1 and 3), cv2
    # floor(x * scale) (columns 0 and 2)
    mask = np.array([[10, 20, 30, 40]] * 2, np.uint8)
    assert resize_mask(mask, 2, "bilinear_antialias")[0].tolist() == [20, 40]
    assert resize_mask(mask, 2)[0].tolist() == [10, 30]


def test_datasets_on_the_same_files_with_different_resizes_get_different_arrays(polyp):
    CACHE.clear()
    default = build_dataset("mini_polyp", polyp, "val", 32, MEAN, STD, normalize=False)
    first = [default.load(i)[0].copy() for i in range(len(default))]
    bilinear = build_dataset("mini_polyp", polyp, "val", 32, MEAN, STD, normalize=False, resize="bilinear_antialias")
    for i in range(len(bilinear)):
        image, mask, hw = bilinear.load(i)
        full = np.asarray(Image.open(bilinear.entries[i].image).convert("RGB"))
        assert np.array_equal(image, resize_image(full, 32, "bilinear_antialias"))  # not the cached bicubic one
        assert not np.array_equal(image, first[i])
        assert np.array_equal(default.load(i)[0], first[i])  # and the bicubic ones are still served as they were
    assert CACHE.hits > 0 and len(CACHE) == 4 * len(default)  # (image, mask) x 2 resizes, each kept on its own
    assert default[0]["image_id"] != bilinear[0]["image_id"]  # the frozen-feature cache keys on it too
    assert default[0]["image_id"].endswith("@32")  # ids of the default stay as they were


def test_a_trial_reads_resize_and_prompt_level_from_its_data_config(polyp):
    class Spec:
        image_size, mean, std = 32, MEAN, STD

    def datasets(**data):
        cfg = TrialConfig.from_dict({"model": {}, "data": {"dataset": "mini_polyp", "root": str(polyp), **data}})
        return trial.build_datasets(cfg, Spec)

    same = datasets()
    assert {ds.resize for ds in same.values()} == {"bicubic"} and same["val"].prompts[0] == "polyp."
    other = datasets(resize="bilinear_antialias", prompt_level="p2")
    assert {ds.resize for ds in other.values()} == {"bilinear_antialias"}
    assert other["val"].prompts == [f"polyp number {i}." for i in range(len(other["val"]))]
    with pytest.raises(ConfigError, match=r"data\.resize: unknown resize 'bilinear'; allowed: bicubic, "):
        datasets(resize="bilinear")
    # medvlsm fed the prompts as written: no full stop, and p0 is the empty prompt
    assert datasets(prompt_full_stop=False)["val"].prompts[0] == "polyp"
    as_written = datasets(prompt_full_stop=False, prompt_level="p0")
    assert {ds[i]["prompt"] for ds in as_written.values() for i in range(len(ds))} == {""}


# --- data.prompt_level -------------------------------------------------------------------------------------


def test_prompt_level_picks_that_level_of_every_entry(polyp):
    ds = build_dataset("mini_polyp", polyp, "test", 32, MEAN, STD, prompt_level="p2")
    assert [ds[i]["prompt"] for i in range(len(ds))] == [f"polyp number {i}." for i in range(len(ds))]
    empty = build_dataset("mini_polyp", polyp, "test", 32, MEAN, STD, prompt_level="p0")
    assert empty.prompts == ["."] * len(empty)  # p0 is the empty prompt (a full stop, as every prompt gets)
    assert readers.prompt_levels(load_card("mini_polyp"), polyp, "train") == ("p0", "p1", "p2")  # p3: one entry only


@pytest.mark.parametrize("level", ["p3", "p9", "P1"])
def test_a_missing_prompt_level_is_one_line_naming_field_dataset_and_levels(polyp, level):
    with pytest.raises(ConfigError) as err:
        build_dataset("mini_polyp", polyp, "train", 32, MEAN, STD, prompt_level=level)
    text = str(err.value)
    assert "\n" not in text and text.startswith("data.prompt_level: mini_polyp train has no prompt level")
    assert repr(level) in text and "p0, p1, p2)" in text and str(polyp / "anns" / "train.json") in text


def test_prompt_level_on_a_dataset_without_levels_is_an_error(tmp_path):
    card = load_card("voc")
    with pytest.raises(ConfigError, match="data.prompt_level: voc has no prompt levels"):
        from trainables.data.dataset import with_prompt_level

        with_prompt_level(card, tmp_path, "train", "p1")


# --- the main-line spec ---------------------------------------------------------------------------------------

# scripts/default_configs.py @9a91b04 of medvlsm: p0..p9, CAMUS p0..p7, BUSI and CheXlocalize p0..p6; CAMUS
# p2..p7 are left out because our rebuilt CAMUS train split carries p0 and p1 only (datasets/splits/README.md).
LEVELS = {"kvasir": 10, "clinicdb": 10, "bkai": 10, "isic": 10, "dfu": 10, "busi": 7, "chexlocalize": 7, "camus": 2}


def test_the_main_line_spec_runs_one_cell_per_prompt_level_with_the_torchvision_resize():
    plan = build_plan(load_spec(REPO / "experiments" / "medvlsm_e2e_main.yaml").with_data_root("/data"))
    cells = {(c.dataset, c.variant): c for c in plan.cells}
    assert sorted(cells) == sorted((d, f"p{i}") for d, n in LEVELS.items() for i in range(n))
    levels = {}  # (dataset, split) -> the levels every entry of the shipped split file carries
    for (dataset, level), cell in cells.items():
        cfg = TrialConfig.from_dict(cell.config)
        assert cfg.data.prompt_level == level and cfg.data.resize == "bilinear_antialias"
        assert cfg.data.prompt_full_stop is False  # medvlsm's prompts as written
        # monai 1.1.0's DiceCELoss on one channel: the CE term is 0, the loss is Dice alone
        assert cfg.train.bce_weight == 0.0 and cfg.data.mask_target == "original"
        for split in ("train", "val", "test"):
            if (dataset, split) not in levels:
                levels[dataset, split] = readers.prompt_levels(load_card(dataset), Path("/nonexistent"), split, "card")
            assert level in levels[dataset, split], (dataset, split, level)


def test_the_kvasir_mini_levels_are_medvlsms(tmp_path):
    found = [p / "shared" / "data" / "kvasir_seg_mini" for p in (REPO.parent, REPO.parents[1])]
    kvasir = next((p for p in found if p.is_dir()), None)
    if kvasir is None:
        pytest.skip("kvasir_seg_mini not present")
    root = tmp_path / "kvasir"
    shutil.copytree(kvasir / "anns", root / "anns")
    assert readers.prompt_levels(load_card("kvasir"), root, "val") == tuple(f"p{i}" for i in range(10))


def test_a_resize_typo_is_refused_when_the_config_is_built():
    """`plan` builds the trial configs: a typo in data.resize is refused there, not when a trial starts."""
    from trainables import trial_config
    from trainables.config import ConfigError
    from trainables.data import transforms

    assert trial_config.RESIZES == transforms.RESIZES
    with pytest.raises(ConfigError, match=r"data\.resize: unknown resize 'bilinear'; allowed: bicubic, bilinear_antialias"):
        trial_config.DataConfig(dataset="kvasir", root="/x", resize="bilinear")
