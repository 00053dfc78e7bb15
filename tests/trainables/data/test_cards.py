"""Data cards and the shipped split files: strict loading, paper Table 1 counts, the CAMUS rule, leaks."""

import gzip
import json
from pathlib import Path

import pytest

from trainables.config import ConfigError
from trainables.data.cards import DataCard, card_names, cards_dir, load_card
from trainables.data.prepare import camus_entries, camus_entries_from_tree, compact_medvlsm_splits
from trainables.data.readers import normalise_prompt, read_annotation_file

REPO = Path(__file__).resolve().parents[3]
MEDVLSM = Path(__file__).resolve().parents[4] / "shared" / "data/medvlsm-splits"
# Paper Table 1 (train/val/test); Cityscapes and VOC have no test split ("-").
TABLE1 = {
    "kvasir": (800, 100, 100), "clinicdb": (490, 61, 61), "bkai": (800, 100, 100), "isic": (810, 90, 379),
    "dfu": (1600, 200, 200), "camus": (4800, 600, 600), "busi": (624, 78, 78), "chexlocalize": (1279, 446, 452),
    "cityscapes": (34723, 6005, None), "voc": (2170, 2148, None),
}
MEDICAL = [k for k, v in TABLE1.items() if v[2] is not None]


def test_every_card_loads_and_the_ten_paper_datasets_are_there():
    names = card_names()
    assert set(TABLE1) | {"mini_polyp", "mini_skin", "mini_echo"} <= set(names)
    for name in names:
        card = load_card(name)
        assert card.name == name and card.classes and card.counts
        assert card.path == str(cards_dir() / f"{name}.yaml")
        if card.domain != "synthetic":
            assert card.citation and card.licence and card.homepage and card.download


@pytest.mark.parametrize("name", list(TABLE1))
def test_card_counts_equal_paper_table1(name):
    card = load_card(name)
    train, val, test = TABLE1[name]
    assert (card.expected_count("train"), card.expected_count("val")) == (train, val)
    if test is None:  # val serves as test
        assert card.source_split("test") == "val"
    else:
        assert card.expected_count("test") == test


@pytest.mark.parametrize("name", MEDICAL)
def test_shipped_split_files_have_table1_counts_and_p1_prompts(name):
    card = load_card(name)
    for split, expected in zip(("train", "val", "test"), TABLE1[name]):
        rows = read_annotation_file(card.shipped_annotation(split))
        assert len(rows) == expected, (name, split)
        assert all({"img_name", "mask_name", "prompts"} <= set(r) and "p1" in r["prompts"] for r in rows)


def _prompt_set(p):
    return tuple(normalise_prompt(x) for x in p) if isinstance(p, list) else (normalise_prompt(p),)


def test_class_prompts_on_cards_are_the_p1_prompts_of_the_split_files():
    for name in MEDICAL:
        card = load_card(name)
        in_files = {_prompt_set(r["prompts"]["p1"]) for s in ("train", "val", "test")
                    for r in read_annotation_file(card.shipped_annotation(s))}
        on_card = {_prompt_set(c.prompt) for c in card.classes}
        assert on_card <= in_files, name
        # The only other p1 values are the negatives the cards' notes mention.
        assert in_files - on_card <= {("no polyp.",), ("No tumor in the breast ultrasound image.",)}, name


def test_known_upstream_duplicates_and_leaks_are_exactly_those_on_the_cards():
    for name in MEDICAL:
        card = load_card(name)
        splits = {s: read_annotation_file(card.shipped_annotation(s)) for s in ("train", "val", "test")}
        dups = set()
        for rows in splits.values():
            pairs = [(r["img_name"], r["mask_name"]) for r in rows]
            dups |= {p[0] for p in pairs if pairs.count(p) > 1}
        assert dups == set(card.known_duplicates), name
        images = {s: {(card.image_dir(s), r["img_name"]) for r in rows} for s, rows in splits.items()}
        leaks = (images["train"] & images["val"]) | (images["train"] & images["test"]) | (images["val"] & images["test"])
        assert {n for _, n in leaks} == set(card.known_leaks), name


def test_splits_folder_is_small_and_carries_the_mit_notice():
    folder = REPO / "datasets" / "splits"
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 3 * 2**20
    assert "Nepal Applied Mathematics and Informatics Institute" in (folder / "LICENSE").read_text()


def test_camus_rule_reproduces_medvlsm_val_and_gives_4800_train():
    val = read_annotation_file(load_card("camus").shipped_annotation("val"))
    rebuilt = camus_entries(range(1, 51))
    assert [(r["img_name"], r["mask_name"], r["prompts"]["p1"]) for r in val] == \
           [(r["img_name"], r["mask_name"], r["prompts"]["p1"]) for r in rebuilt]
    train = read_annotation_file(load_card("camus").shipped_annotation("train"))
    assert len(train) == 4800 and train == camus_entries(range(51, 451))
    patients = {int(r["img_name"][7:11]) for r in train}
    assert patients == set(range(51, 451))  # disjoint from val's 1-50


def _camus_tree(root: Path, patients, drop=None):
    for pid in patients:
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                stem = f"patient{pid:04d}_{view}_{phase}"
                (root / "images/train").mkdir(parents=True, exist_ok=True)
                (root / "images/train" / f"{stem}.png").write_bytes(b"x")
                for k in (1, 2, 3):
                    path = root / f"masks/train/mask_{k}/{stem}_gt.png"
                    if path.name == drop and k == 2:
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"x")


def test_camus_rule_on_a_synthetic_camus_shaped_tree(tmp_path):
    _camus_tree(tmp_path, [1, 2, 51, 52, 53])
    rows = camus_entries_from_tree(tmp_path, "train", patients=range(51, 54))
    assert rows == camus_entries([51, 52, 53]) and len(rows) == 3 * 4 * 3
    assert rows[0]["mask_name"] == "mask_1/patient0051_2CH_ED_gt.png"
    assert [r["mask_name"][:6] for r in rows[:3]] == ["mask_1", "mask_2", "mask_3"]
    with pytest.raises(ValueError, match=r"patients \[54\] have no images"):
        camus_entries_from_tree(tmp_path, "train", patients=range(51, 55))
    broken = tmp_path / "broken"
    _camus_tree(broken, [7], drop="patient0007_4CH_ES_gt.png")
    with pytest.raises(ValueError, match=r"mask_2/patient0007_4CH_ES_gt.png not found"):
        camus_entries_from_tree(broken, "train")


@pytest.mark.skipif(not MEDVLSM.is_dir(), reason="medvlsm split snapshot not available")
def test_shipped_files_are_the_medvlsm_files_and_regenerate_byte_identically(tmp_path):
    written = compact_medvlsm_splits(MEDVLSM, tmp_path)
    assert written["camus/train"] == 4800
    for rel, _ in written.items():
        assert (tmp_path / f"{rel}.jsonl.gz").read_bytes() == (REPO / "datasets/splits" / f"{rel}.jsonl.gz").read_bytes()
    folders = {"kvasir": "kvasir_polyp", "bkai": "bkai_polyp", "isic": "isic"}
    for card, folder in folders.items():
        original = json.loads((MEDVLSM / "data" / folder / "anns/train.json").read_text())
        with gzip.open(REPO / f"datasets/splits/{card}/train.jsonl.gz", "rt") as f:
            compact = [json.loads(line) for line in f]
        assert [(o["img_name"], o["mask_name"], o["prompts"]) for o in original] == \
               [(c["img_name"], c["mask_name"], c["prompts"]) for c in compact]


def test_card_loading_is_strict(tmp_path):
    good = (cards_dir() / "kvasir.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(good + "colour: blue\n")
    with pytest.raises(ConfigError, match=r"unknown key 'colour'; allowed: name, display"):
        load_card(bad)
    bad.write_text(good.replace("counts: {train: 800", "counts: {training: 800"))
    with pytest.raises(ConfigError, match=r"`counts` has unknown split\(s\) \['training'\]"):
        load_card(bad)
    with pytest.raises(ConfigError, match=r"unknown dataset 'kvasr' \(did you mean 'kvasir'\?\); allowed: .*kvasir"):
        load_card("kvasr")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_card(tmp_path / "nope.yaml")
    assert isinstance(load_card(str(cards_dir() / "kvasir.yaml")), DataCard)


def test_cards_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text((cards_dir() / "mini_polyp.yaml").read_text().replace(
        "name: mini_polyp", "name: mine"))
    monkeypatch.setenv("TUNEVLSEG_CARDS", str(tmp_path))
    assert card_names() == ["mine"] and load_card("mine").display == "MiniPolyp"
    monkeypatch.setenv("TUNEVLSEG_CARDS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="TUNEVLSEG_CARDS"):
        card_names()


def test_synthetic_cards_match_the_generator_defaults():
    from trainables.data.synthetic import SPECS

    for name, spec in SPECS.items():
        per_image = len(load_card(name).classes)
        assert tuple(load_card(name).counts[s] for s in ("train", "val", "test")) == \
               tuple(n * per_image for n in spec.counts)
