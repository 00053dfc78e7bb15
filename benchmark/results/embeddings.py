"""The paper's Fig. 4 from embedding vectors: t-SNE to 2-D, one figure for phrases and one for images
coloured by dataset, the 2-D points as a table, and a t-SNE-free summary. No torch here (the vectors come
from `trainables.embeddings`).

t-SNE is scikit-learn's (`sklearn.manifold.TSNE`, Barnes-Hut, PCA initialisation, fixed seed). scikit-learn
is already installed with MLflow (it is one of mlflow's requirements); the `embeddings` extra names it so
that the dependency is explicit. A t-SNE picture shows neighbourhoods, not distances: the summary table
gives, from the full-dimensional vectors, the cosine similarity of each dataset's mean embedding to the
reference set's (the pretraining data: how far the domain has shifted) and the leave-one-out 1-NN accuracy
of telling the datasets apart (1.0 = every dataset forms its own cluster).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmark.results.palette import dataset_styles

DPI = 130
KINDS = {"text": "phrases (text embeddings)", "image": "images (image embeddings)"}
FILES = {"text": "embeddings_phrases.png", "image": "embeddings_images.png"}
POINTS_FILE = "embeddings.csv"
SUMMARY_FILE = "embeddings_summary.md"


def tsne_2d(vectors: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> tuple[np.ndarray, float]:
    """2-D t-SNE of the rows of `vectors` and the perplexity used (capped below n/3: t-SNE needs n > 3 ×
    perplexity to be meaningful; scikit-learn refuses perplexity >= n)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:  # pragma: no cover - scikit-learn comes with mlflow
        raise ImportError("t-SNE needs scikit-learn: pip install 'tunevlseg[embeddings]'") from e
    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2)), math.nan
    from threadpoolctl import threadpool_limits  # a scikit-learn requirement

    p = float(max(1.0, min(perplexity, (n - 1) / 3)))
    # One thread: the same points on every machine (no thread-count-dependent summation order), and on a
    # busy 2-core machine OpenMP's spinning threads made it 10x slower (64 s vs 6 s for 400 points).
    with threadpool_limits(limits=1):
        xy = TSNE(n_components=2, perplexity=p, init="pca", learning_rate="auto", random_state=seed
                  ).fit_transform(np.asarray(vectors, dtype=np.float64))
    return xy, p


def summary(rows: Sequence[dict], vectors: np.ndarray, reference: str | None) -> pd.DataFrame:
    """Per dataset: items, cosine similarity of its mean embedding to the reference's, and the share of
    its items whose nearest other item (cosine) belongs to the same dataset."""
    labels = np.array([r["dataset"] for r in rows])
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    nn_same = labels[sim.argmax(axis=1)] == labels if len(v) > 1 else np.zeros(len(v), bool)
    ref = v[labels == reference].mean(axis=0) if reference is not None and (labels == reference).any() else None
    out = []
    for ds in dict.fromkeys(labels):
        m = labels == ds
        c = v[m].mean(axis=0)
        cos = float(c @ ref / (np.linalg.norm(c) * np.linalg.norm(ref))) if ref is not None and ds != reference \
            else math.nan
        out.append({"dataset": ds, "items": int(m.sum()), "cosine_to_reference": cos,
                    "nn_same_dataset": float(nn_same[m].mean()) if m.sum() else math.nan})
    return pd.DataFrame(out)


def scatter(points: pd.DataFrame, kind: str, path: str | Path, title: str, label_items: int = 40) -> Path:
    """One t-SNE panel, coloured (and, beyond eight datasets, shaped) by dataset. A dataset's phrases are
    written beside their points when there are few (the reference set's never: too many)."""
    own_points = points[~points["reference"]]
    styles = dataset_styles(own_points["dataset"])
    fig = Figure(figsize=(8.6, 6.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    size = 46 if len(points) <= 60 else 18
    for ds, g in own_points.groupby("dataset", sort=False):
        colour, marker = styles[ds]
        ax.scatter(g["x"], g["y"], s=size, color=colour, marker=marker, alpha=0.9, edgecolors="0.15",
                   linewidths=0.5, label=f"{ds} ({len(g)})", zorder=3)
    ref = points[points["reference"]]
    if len(ref):  # the pretraining data: a grey background the datasets are read against
        ax.scatter(ref["x"], ref["y"], s=size * 0.6, color="0.7", marker="o", edgecolors="none",
                   label=f"{ref['dataset'].iloc[0]} ({len(ref)})", zorder=2)
    if kind == "text":
        own = points[~points["reference"]]
        if len(own) <= label_items:
            _label_points(ax, own)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    fig.legend(title="Dataset (items)", loc="outside right upper", fontsize=8, title_fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _label_points(ax, points: pd.DataFrame, fontsize: float = 7) -> None:
    """Write each phrase beside its point, at the first of four places (right/left x above/below) whose
    box overlaps no label already placed; text size estimated from the font size, in points."""
    ax.autoscale_view()
    to_pt = ax.transData + ax.figure.dpi_scale_trans.inverted()  # data -> inches
    placed: list[tuple[float, float, float, float]] = []
    for r in points.itertuples():
        px, py = (np.asarray(to_pt.transform((r.x, r.y))) * 72.0)
        w, h = 0.55 * fontsize * len(str(r.item)), fontsize * 1.1
        choice = None
        for dx, dy, ha in ((4, 3, "left"), (4, -3 - h, "left"), (-4, 3, "right"), (-4, -3 - h, "right")):
            x0 = px + dx if ha == "left" else px + dx - w
            box = (x0, py + dy, x0 + w, py + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (dx, dy, ha, box)
                break
        dx, dy, ha, box = choice or (4, 3, "left", (px + 4, py + 3, px + 4 + w, py + 3 + h))
        placed.append(box)
        ax.annotate(r.item, (r.x, r.y), xytext=(dx, dy), textcoords="offset points", ha=ha, va="bottom",
                    fontsize=fontsize, color="0.15")


def write(rows: Sequence[dict], vectors: Sequence[np.ndarray], out_dir: str | Path, *, model: str,
          reference: str | None = None, seed: int = 0, perplexity: float = 30.0) -> list[Path]:
    """t-SNE per kind, the two figures, the points table and the summary, into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, written, summaries = [], [], []
    vectors = np.asarray(vectors)
    for kind in KINDS:
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if not idx:
            continue
        sub = [rows[i] for i in idx]
        xy, used = tsne_2d(vectors[idx], seed=seed, perplexity=perplexity)
        pts = pd.DataFrame(sub)
        pts["x"], pts["y"] = xy[:, 0], xy[:, 1]
        pts["reference"] = pts["dataset"] == reference
        pts["perplexity"] = used
        frames.append(pts)
        title = (f"t-SNE of {KINDS[kind]}: {model}\n{len(pts)} items, perplexity {used:.3g}, seed {seed}"
                 + (f"; reference: {reference}" if reference else ""))
        written.append(scatter(pts, kind, out_dir / FILES[kind], title))
        s = summary(sub, vectors[idx], reference)
        s.insert(0, "kind", kind)
        summaries.append(s)
    points = pd.concat(frames, ignore_index=True)
    cols = ["dataset", "kind", "x", "y", "split", "item", "reference", "perplexity"]
    points[cols].assign(model=model).to_csv(out_dir / POINTS_FILE, index=False, float_format="%.6g",
                                            lineterminator="\n")
    written.append(out_dir / POINTS_FILE)
    written.append(_write_summary(pd.concat(summaries, ignore_index=True), out_dir / SUMMARY_FILE, model,
                                  reference))
    return written


def _write_summary(s: pd.DataFrame, path: Path, model: str, reference: str | None) -> Path:
    lines = [f"# Embeddings of {model}", "",
             "Computed on the full-dimensional, L2-normalised embeddings (not on the t-SNE points).", "",
             "- `cosine_to_reference`: cosine similarity of the dataset's mean embedding to the reference "
             "set's" + (f" ({reference})" if reference else " (no reference set given: –)") + ".",
             "- `nn_same_dataset`: share of the dataset's items whose nearest other item (cosine) is from the "
             "same dataset (1.00: a cluster of its own).", "",
             "| kind | dataset | items | cosine_to_reference | nn_same_dataset |", "|:---|:---|---:|---:|---:|"]
    for r in s.itertuples():
        cos = "–" if math.isnan(r.cosine_to_reference) else f"{r.cosine_to_reference:.3f}"
        nn = "–" if math.isnan(r.nn_same_dataset) else f"{r.nn_same_dataset:.2f}"
        lines.append(f"| {r.kind} | {r.dataset} | {r.items} | {cos} | {nn} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
