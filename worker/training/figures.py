"""Figures: the plumbing ``describe`` and ``evaluation`` share, and the evaluation figures.

Plots use matplotlib ``Figure`` objects (Agg), never pyplot: no global state.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from schemas.classes import CLASS_NAMES, DISPLAY_NAMES, MELANOMA, MELANOMA_INDEX
from worker.training.metrics import N_BINS, N_WRONG

CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_curves.png"
RELIABILITY_PNG = "reliability.png"
WRONG_PNG = "confidently_wrong.png"
#: The files :func:`write_evaluation_figures` writes.
EVALUATION_FIGURES = (CONFUSION_PNG, ROC_PNG, RELIABILITY_PNG, WRONG_PNG)
#: Resolution of the saved figures; they are laid out at print size for the PDF.
FIGURE_DPI = 200


def save_figure(fig: Figure, path: Path, dpi: int = 150) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)


def load_thumbnail(path: str, size: int) -> np.ndarray | None:
    """An RGB thumbnail of an image file, or None when it cannot be read (never fatal)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except (OSError, ValueError):
        return None


# --- evaluation figures --------------------------------------------------------------------


def write_evaluation_figures(metrics: dict, probs: np.ndarray, labels: np.ndarray, melanoma: np.ndarray,
                             out_dir: Path) -> None:
    """The four evaluation figures of ``metrics`` (from ``metrics.evaluation_metrics`` on the
    same ``probs``, ``labels`` and ``melanoma``) into ``out_dir``."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).ravel()
    melanoma = np.asarray(melanoma).astype(int).ravel()
    out_dir = Path(out_dir)
    _plot_confusion(np.array(metrics["nine_class"]["confusion_matrix"]), out_dir / CONFUSION_PNG)
    _plot_roc(probs, labels, melanoma, metrics["melanoma"], out_dir / ROC_PNG)
    _plot_reliability(metrics["reliability_bins"], metrics["ece"]["value"], probs[labels >= 0],
                      out_dir / RELIABILITY_PNG)
    _plot_wrong(metrics["confidently_wrong"], out_dir / WRONG_PNG)


def _wrap(name: str, width: int = 16) -> str:
    return "\n".join(textwrap.wrap(name, width))


def _plot_confusion(cm: np.ndarray, path: Path) -> None:
    names = [_wrap(DISPLAY_NAMES[c]) for c in CLASS_NAMES]
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    k = len(names)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, f"{norm[i, j]:.2f}".lstrip("0") if norm[i, j] < 1 else "1",
                        ha="center", va="center", fontsize=5.5,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=5.5)
    ax.set_yticks(range(k), [f"{n} ({int(t)})" for n, t in zip(names, totals.ravel())], fontsize=5.5)
    ax.set_xlabel("Predicted", fontsize=7)
    ax.set_ylabel("True (n)", fontsize=7)
    ax.set_title("Confusion matrix (row-normalised)", fontsize=8)
    cb = fig.colorbar(im, ax=ax, shrink=0.7)
    cb.ax.tick_params(labelsize=5.5)
    save_figure(fig, path, dpi=FIGURE_DPI)


def _plot_roc(probs, labels, melanoma, mel: dict, path: Path) -> None:
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    known = labels >= 0
    colors = [f"C{i}" for i in range(10)]
    for i, name in enumerate(CLASS_NAMES):
        if name == MELANOMA:
            continue
        y = (labels[known] == i).astype(int)
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, probs[known, i])
        auc = roc_auc_score(y, probs[known, i])
        ax.plot(fpr, tpr, lw=0.8, alpha=0.7, color=colors[i % 10],
                label=f"{DISPLAY_NAMES[name]} {auc:.2f}")
    if 0 < melanoma.sum() < melanoma.size:
        fpr, tpr, _ = roc_curve(melanoma, probs[:, MELANOMA_INDEX])
        ax.plot(fpr, tpr, lw=2.2, color="crimson",
                label=f"Melanoma vs rest {mel['auc']['value']:.2f}")
        sens, spec = mel["sensitivity"]["value"], mel["specificity"]["value"]
        if sens is not None and spec is not None:
            ax.plot([1 - spec], [sens], marker="o", ms=6, mfc="white", mec="crimson", mew=1.8,
                    ls="none", label=f"Urgent threshold {mel['threshold']:.2f}")
            ax.annotate(f"sens {sens:.2f}\nspec {spec:.2f}", (1 - spec, sens),
                        xytext=(8, -18), textcoords="offset points", fontsize=6, color="crimson")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)", fontsize=7)
    ax.set_ylabel("True positive rate (sensitivity)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title("ROC curves, one-vs-rest (AUC)", fontsize=8)
    ax.legend(fontsize=5.2, loc="lower right", frameon=True, framealpha=0.9)
    save_figure(fig, path, dpi=FIGURE_DPI)


def _plot_reliability(bins: list[dict], ece: float | None, kp: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(4.2, 3.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    width = (bins[0]["upper"] - bins[0]["lower"]) if bins else 1 / N_BINS
    filled = [b for b in bins if b["count"]]
    top.bar([(b["lower"] + b["upper"]) / 2 for b in filled], [b["accuracy"] for b in filled],
            width=width * 0.95, color="steelblue", edgecolor="white", label="Accuracy")
    top.bar([(b["lower"] + b["upper"]) / 2 for b in filled],
            [b["confidence"] - b["accuracy"] for b in filled], bottom=[b["accuracy"] for b in filled],
            width=width * 0.95, color="none", edgecolor="crimson", hatch="////", lw=0.6, label="Gap")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="Perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy", fontsize=7)
    top.tick_params(labelsize=6)
    top.legend(fontsize=5.5, loc="upper left")
    ece_text = f"{ece:.3f}" if ece is not None else "n/a"
    top.set_title(f"Reliability (top label), ECE = {ece_text}", fontsize=8)
    conf = kp.max(axis=1) if kp.size else np.array([])
    bottom.hist(conf, bins=[b["lower"] for b in bins] + [1.0] if bins else N_BINS,
                color="grey", edgecolor="white")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Confidence (top-class probability)", fontsize=7)
    bottom.set_ylabel("Images", fontsize=7)
    bottom.tick_params(labelsize=6)
    save_figure(fig, path, dpi=FIGURE_DPI)


def _plot_wrong(wrong: list[dict], path: Path) -> None:
    shown = []
    for w in wrong:
        thumb = load_thumbnail(w["path"], 160)
        if thumb is not None:
            shown.append((w, thumb))
        if len(shown) == N_WRONG:
            break
    cols = 4
    rows = max(1, math.ceil(len(shown) / cols))
    fig = Figure(figsize=(cols * 1.9, rows * 2.2 + 0.3), layout="constrained")
    fig.suptitle("Most confidently wrong images", fontsize=9)
    if not shown:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "No wrong predictions with a readable image", ha="center", va="center",
                fontsize=8)
    axes = fig.subplots(rows, cols, squeeze=False) if shown else np.empty((0, 0))
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= len(shown):
            continue
        w, thumb = shown[k]
        ax.imshow(np.asarray(thumb))
        ax.set_title(f"True: {w['true']}\nPred: {w['predicted']} ({w['probability']:.2f})\n"
                     f"{Path(w['path']).name[:28]}", fontsize=5.5, color="darkred")
    save_figure(fig, path, dpi=FIGURE_DPI)
