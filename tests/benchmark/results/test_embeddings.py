"""`tunevlseg embeddings` (paper Fig. 4): the VLSM's own embeddings of each prompt and image, t-SNE, the
figures and the 2-D points table (issue 19, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import cli
from benchmark.results import embeddings as B
from benchmark.results.palette import OKABE_ITO, dataset_styles

REPO = Path(__file__).resolve().parents[3]
CLIPSEG_MINI = REPO / "models" / "clipseg-mini"
CRIS_MINI = REPO / "models" / "cris-mini"


# ---- torch-free: t-SNE, table, summary -----------------------------------------------------------------


def _clusters(rng, centre, n, spread=0.05):
    return centre + spread * rng.standard_normal((n, len(centre)))


def test_write_gives_figures_points_table_and_a_summary_from_the_full_vectors(tmp_path):
    rng = np.random.default_rng(0)
    dim = 16
    a, b, ref = np.eye(dim)[0], np.eye(dim)[1], 0.9 * np.eye(dim)[0] + 0.1 * np.eye(dim)[2]
    rows, vecs = [], []
    for name, centre, n in (("near", a, 30), ("far", b, 30), ("corpus", ref, 40)):
        for i, v in enumerate(_clusters(rng, centre, n)):
            rows.append({"dataset": name, "kind": "image", "split": "test", "item": f"{name}-{i}"})
            vecs.append(v)
    for name, phrase in (("near", "polyp."), ("far", "skin melanoma."), ("corpus", "red circle.")):
        rows.append({"dataset": name, "kind": "text", "split": "", "item": phrase})
        vecs.append(rng.standard_normal(dim))
    written = B.write(rows, vecs, tmp_path, model="clipseg (test vectors)", reference="corpus")
    assert {p.name for p in written} == {B.FILES["text"], B.FILES["image"], B.POINTS_FILE, B.SUMMARY_FILE}
    pts = pd.read_csv(tmp_path / B.POINTS_FILE)
    assert list(pts.columns[:4]) == ["dataset", "kind", "x", "y"]
    assert len(pts) == len(rows) and set(pts["kind"]) == {"text", "image"}
    assert pts.loc[pts["kind"] == "text", "perplexity"].iloc[0] == 1.0  # 3 phrases: capped, not an error
    img = pts[pts["kind"] == "image"]
    centres = img.groupby("dataset")[["x", "y"]].mean()
    within = np.mean([np.linalg.norm(g[["x", "y"]].to_numpy() - centres.loc[d].to_numpy(), axis=1).mean()
                      for d, g in img.groupby("dataset")])
    assert np.linalg.norm(centres.loc["near"] - centres.loc["far"]) > 3 * within  # clusters stay apart
    summary = (tmp_path / B.SUMMARY_FILE).read_text()
    s = {line.split(" | ")[1]: line.split(" | ")[2:] for line in summary.splitlines() if line.startswith("| image |")}
    assert float(s["near"][1]) > 0.98 and abs(float(s["far"][1])) < 0.05  # cosine of the mean to the corpus's
    assert s["far"][2] == "1.00 |" and s["corpus"][1] == "–"  # 1-NN within "far"; no self-similarity


def test_tsne_is_deterministic_for_a_seed():
    v = np.random.default_rng(1).standard_normal((40, 8))
    a, _ = B.tsne_2d(v, seed=3)
    b, _ = B.tsne_2d(v, seed=3)
    assert np.array_equal(a, b)


def test_palette_is_colour_blind_safe_and_distinct_per_dataset():
    keys = [f"ds{i}" for i in range(11)]
    styles = dataset_styles(keys)
    assert len(set(styles.values())) == 11 and {c for c, _ in styles.values()} <= set(OKABE_ITO)
    mini = dataset_styles(["mini_polyp", "mini_skin", "mini_echo"])
    assert len({c for c, _ in mini.values()}) == 3
    # a paper dataset looks the same whichever other datasets a run has
    assert dataset_styles(["kvasir", "busi"])["kvasir"] == dataset_styles(["voc", "kvasir"])["kvasir"]


# ---- the torch part, on the embedded mini models ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from trainables.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data")
    for name in ("mini_polyp", "mini_echo"):
        make_synthetic(name, root / name, counts=(4, 2, 2), size=48)
    return root


@pytest.mark.skipif(not CLIPSEG_MINI.is_dir(), reason="mini models not present")
def test_vectors_are_the_models_own_normalised_text_and_image_embeddings(tiny_data):
    import torch

    from trainables import embeddings as E

    adapter = E.load_vlsm("clipseg", str(CLIPSEG_MINI))
    emb = E.embed(adapter, {"mini_polyp": tiny_data / "mini_polyp"}, splits=("test",), batch_size=5)
    text = [i for i, r in enumerate(emb.rows) if r["kind"] == "text"]
    images = [i for i, r in enumerate(emb.rows) if r["kind"] == "image"]
    assert [emb.rows[i]["item"] for i in text] == ["polyp."] and len(images) == 2
    tok = adapter.tokenize(["polyp."])
    own = torch.nn.functional.normalize(adapter.text_features(tok["input_ids"], tok["attention_mask"]), dim=-1)
    assert np.allclose(emb.vectors[text[0]], own[0].numpy(), atol=1e-5)
    assert emb.vectors[images[0]].shape == (adapter.spec.image_feature_dim,)
    assert np.linalg.norm(emb.vectors[images[0]]) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(emb.vectors[images[0]], emb.vectors[images[1]])


def test_mini_corpus_reference_is_the_pretraining_stream():
    from trainables.embeddings import mini_corpus
    from trainables.mini.corpus import make_batch
    from trainables.mini.pretrain import PretrainConfig

    cfg = PretrainConfig()
    imgs, phrases, _ = make_batch(np.random.default_rng(cfg.seed), cfg.batch_size, cfg.image_size)
    got_phrases, got_images = mini_corpus(cfg.batch_size)
    assert np.array_equal(np.stack(got_images), imgs)  # the first pretraining batch, image for image
    assert got_phrases == list(dict.fromkeys(p + "." for p in phrases))


@pytest.mark.skipif(not CRIS_MINI.is_dir(), reason="mini models not present")
def test_cris_text_features_are_its_sentence_embedding():
    import torch

    from trainables.embeddings import load_vlsm

    adapter = load_vlsm("cris", str(CRIS_MINI))
    tok = adapter.tokenize(["polyp.", "skin melanoma."])
    f = adapter.text_features(tok["input_ids"], tok["attention_mask"])
    _, state, _ = adapter.encode_text(tok["input_ids"], tok["attention_mask"])
    assert f.shape[0] == 2 and torch.equal(f, state) and not torch.allclose(f[0], f[1])


def test_cli_reports_bad_input_in_one_line(tiny_data, tmp_path, capsys):
    out = tmp_path / "emb"
    assert cli.main(["embeddings", "--datasets", "mini_polyp", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no data root for dataset 'mini_polyp'" in err
    assert cli.main(["embeddings", "--datasets", "mini_polyp", "--root", "mini_polyp", "--out", str(out)]) == 2
    assert "--root 'mini_polyp': expected NAME=DIR" in capsys.readouterr().err
    assert cli.main(["embeddings", "--datasets", "mini_polyp", "--data", str(tiny_data), "--reference",
                     str(tmp_path / "phrasecut.txt"), "--out", str(out)]) == 2
    assert "phrasecut.txt: no such phrase file" in capsys.readouterr().err


@pytest.mark.skipif(not CLIPSEG_MINI.is_dir(), reason="mini models not present")
def test_cli_end_to_end(tiny_data, tmp_path, capsys):
    out = tmp_path / "emb"
    # either spelling of a card (issue 17): `mini-polyp`, as in cell ids, is the dataset mini_polyp
    rc = cli.main(["embeddings", "--datasets", "mini-polyp", "mini_echo", "--data", str(tiny_data),
                   "--weights", str(CLIPSEG_MINI), "--reference", "mini-corpus", "--reference-size", "8",
                   "--out", str(out)])
    assert rc == 0
    assert "phrases and 24 images of 2 dataset(s) + reference" in capsys.readouterr().out  # 8 + 8 + 8
    for name in (B.FILES["text"], B.FILES["image"], B.POINTS_FILE, B.SUMMARY_FILE):
        assert (out / name).stat().st_size > 0
    pts = pd.read_csv(out / B.POINTS_FILE, keep_default_na=False)
    assert set(pts["dataset"]) == {"mini_polyp", "mini_echo", "mini-corpus (pretraining)"}
    # every distinct prompt once, every image once although each echo image has three masks
    anns = [json.loads((tiny_data / "mini_echo" / "anns" / f"{s}.json").read_text()) for s in ("train", "val", "test")]
    prompts = {p for ann in anns for r in ann for p in r["prompts"]["p1"]}  # the card's prompt key: p1
    echo = pts[pts["dataset"] == "mini_echo"]
    assert set(echo.loc[echo["kind"] == "text", "item"]) == prompts and len(prompts) > 1
    assert len(echo[echo["kind"] == "image"]) == len({r["img_name"] for ann in anns for r in ann}) == 8
    assert set(echo.loc[echo["kind"] == "image", "split"]) == {"train", "val", "test"}
    assert (pts["dataset"] == "mini-corpus (pretraining)").sum() > 8  # 8 images + their phrases
