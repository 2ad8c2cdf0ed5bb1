"""Model evaluation as a command's worth of artefacts: metrics.json, figures and a one-page PDF.

The notebook printed accuracy, precision, recall, F1 and ROC AUC; this keeps those per class
and adds what a triage decision rests on: melanoma sensitivity/specificity at the stored
urgent threshold with bootstrap confidence intervals, calibration, per-source behaviour
(a model can look good on one archive and fail on another) and the triage levels the
thresholds actually produce. Plots use matplotlib ``Figure`` objects (Agg), never pyplot.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from schemas.classes import CLASS_NAMES, DISPLAY_NAMES, MELANOMA, SOON_CLASSES
from schemas.messages import TriageThresholds
from schemas.states import TriageLevel
from worker.classify.triage import class_call, decide
from worker.training.figures import load_thumbnail, save_figure
from worker.training.metrics import (
    N_BINS,
    N_BOOT,
    binary_sens_spec,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    melanoma_metrics,
    reliability_bins,
)

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_curves.png"
RELIABILITY_PNG = "reliability.png"
WRONG_PNG = "confidently_wrong.png"
REPORT_PDF = "evaluation.pdf"

#: How many confidently wrong images the grid shows (and metrics.json lists).
N_WRONG = 12
#: Resolution of the saved figures; they are laid out at print size for the PDF.
FIGURE_DPI = 200

_MEL = CLASS_NAMES.index(MELANOMA)
_SOON = [CLASS_NAMES.index(c) for c in SOON_CLASSES]


def evaluate_predictions(
    probs: np.ndarray,
    labels: np.ndarray,
    melanoma: np.ndarray,
    thresholds: TriageThresholds,
    paths: list[str],
    out_dir: Path,
    title: str,
    seed: int = 0,
    sources: list[str] | None = None,
    n_boot: int = N_BOOT,
) -> dict:
    """Compute every metric, write metrics.json, the figures and evaluation.pdf; return the
    metrics dict.

    ``labels`` is -1 where only melanoma / not-melanoma is known (ISIC 2017): those rows
    count for melanoma metrics, triage counts and the confidently-wrong grid only.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).ravel()
    melanoma = np.asarray(melanoma).astype(int).ravel()
    n = labels.shape[0]
    if probs.shape != (n, len(CLASS_NAMES)):
        raise ValueError(f"probs must be ({n}, {len(CLASS_NAMES)}), got {probs.shape}")
    if melanoma.shape != (n,) or len(paths) != n:
        raise ValueError("labels, melanoma and paths must have one entry per row of probs")
    if sources is not None and len(sources) != n:
        raise ValueError("sources must have one entry per row of probs")
    if labels.size and (labels.min() < -1 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError("labels must be class indices or -1")
    known = labels >= 0
    if np.any(known & ((labels == _MEL) != (melanoma == 1))):
        raise ValueError("melanoma flags disagree with nine-class labels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    p_mel = probs[:, _MEL]
    p_soon = probs[:, _SOON].sum(axis=1)
    kp, kl = probs[known], labels[known]
    pred = class_call(probs, thresholds.class_bias)
    k_pred = pred[known]

    nine = classification_metrics(kp, kl, CLASS_NAMES, pred=k_pred)
    mel = melanoma_metrics(p_mel, melanoma, thresholds, seed=seed, n_boot=n_boot)

    soon_true = np.isin(kl, _SOON).astype(int)
    soon_t = thresholds.soon_keratinocyte
    soon = {
        "threshold": soon_t,
        "n": int(kl.size),
        "n_positive": int(soon_true.sum()),
        "sensitivity": _ci(
            bootstrap_ci(lambda y, s: binary_sens_spec(y, s, soon_t)[0], soon_true, p_soon[known],
                         n_boot=n_boot, seed=seed)
        ),
        "specificity": _ci(
            bootstrap_ci(lambda y, s: binary_sens_spec(y, s, soon_t)[1], soon_true, p_soon[known],
                         n_boot=n_boot, seed=seed)
        ),
    }
    bal = _ci(bootstrap_ci(balanced_accuracy_score, kl, k_pred, n_boot=n_boot, seed=seed))
    ece = _ci(bootstrap_ci(expected_calibration_error, kp, kl, n_boot=n_boot, seed=seed))

    levels = [decide(dict(zip(CLASS_NAMES, row)), thresholds) for row in probs.tolist()]
    truth_groups = np.where(
        melanoma == 1, "melanoma", np.where(~known, "not_melanoma_unspecified",
                                            np.where(np.isin(labels, _SOON), "soon_class", "other")))
    triage_by_truth: dict[str, dict[str, int]] = {}
    for group, level in zip(truth_groups.tolist(), levels):
        triage_by_truth.setdefault(group, {lv.value: 0 for lv in TriageLevel})[level.value] += 1
    counts = Counter(lv.value for lv in levels)

    wrong = _confidently_wrong(probs, pred, labels, melanoma, thresholds, paths)

    metrics: dict = {
        "title": title,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n": n,
        "n_nine_class": int(known.sum()),
        "n_melanoma_only": int((~known).sum()),
        "n_melanoma": int(melanoma.sum()),
        "seed": seed,
        "n_boot": n_boot,
        "ci_level": 0.95,
        "class_names": list(CLASS_NAMES),
        "thresholds": thresholds.model_dump(),
        "melanoma": mel,
        "soon": soon,
        "balanced_accuracy": bal,
        "class_call": _class_call_effect(kp, kl, nine, thresholds),
        "ece": {**ece, "n_bins": N_BINS},
        "reliability_bins": reliability_bins(kp, kl) if kl.size else [],
        "nine_class": nine,
        "triage_counts": {lv.value: counts.get(lv.value, 0) for lv in TriageLevel},
        "triage_by_truth": triage_by_truth,
        "confidently_wrong": [{k: v for k, v in w.items() if k != "index"} for w in wrong],
    }
    if sources is not None:
        metrics["per_source"] = _per_source(np.asarray(sources), labels, melanoma, probs, pred)

    _plot_confusion(np.array(nine["confusion_matrix"]), out_dir / CONFUSION_PNG)
    _plot_roc(probs, labels, melanoma, mel, out_dir / ROC_PNG)
    _plot_reliability(metrics["reliability_bins"], ece["value"], kp, out_dir / RELIABILITY_PNG)
    _plot_wrong(wrong, out_dir / WRONG_PNG)
    metrics["files"] = [METRICS_FILE, CONFUSION_PNG, ROC_PNG, RELIABILITY_PNG, WRONG_PNG, REPORT_PDF]
    metrics = _jsonable(metrics)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    _write_pdf(metrics, out_dir, out_dir / REPORT_PDF)
    return metrics


# --- numbers -------------------------------------------------------------------------------


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(point_low_high: tuple[float, float, float]) -> dict:
    point, low, high = point_low_high
    return {"value": _finite(point), "ci_low": _finite(low), "ci_high": _finite(high)}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    return obj


def _class_call_effect(kp, kl, nine: dict, thresholds: TriageThresholds) -> dict:
    """Balanced accuracy and accuracy of the version's class calls (``nine``) next to plain argmax."""
    if not kl.size:
        return {}
    argmax = kp.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a call of a class absent from the labels
        ba_argmax = float(balanced_accuracy_score(kl, argmax))
    return {
        "rule": "prior-corrected (class_bias)" if thresholds.class_bias else "argmax",
        "balanced_accuracy": nine["balanced_accuracy"],
        "accuracy": nine["accuracy"],
        "balanced_accuracy_argmax": ba_argmax,
        "accuracy_argmax": float(np.mean(argmax == kl)),
    }


def _per_source(sources: np.ndarray, labels, melanoma, probs, pred) -> dict:
    out = {}
    for src in sorted(set(sources.tolist())):
        m = sources == src
        y, p = melanoma[m], probs[m, _MEL]
        known = m & (labels >= 0)
        auc = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None
        bal = (
            float(balanced_accuracy_score(labels[known], pred[known]))
            if known.any() else None
        )
        out[str(src)] = {
            "n": int(m.sum()),
            "n_melanoma": int(y.sum()),
            "n_nine_class": int(known.sum()),
            "melanoma_auc": auc,
            "balanced_accuracy": bal,
        }
    return out


def _confidently_wrong(probs, pred, labels, melanoma, thresholds, paths) -> list[dict]:
    """Wrong rows, most confident first. Nine-class rows: class call != label, confidence is the
    predicted class probability. Melanoma-only rows: wrong on the urgent decision, confidence
    is the probability put against the truth."""
    rows = []
    t = thresholds.urgent_melanoma
    for i in range(labels.shape[0]):
        call = int(pred[i])
        if labels[i] >= 0:
            if call == labels[i]:
                continue
            rows.append({"index": i, "path": str(paths[i]), "true": DISPLAY_NAMES[CLASS_NAMES[labels[i]]],
                         "predicted": DISPLAY_NAMES[CLASS_NAMES[call]], "probability": float(probs[i, call])})
            continue
        p = float(probs[i, _MEL])
        if melanoma[i] == 1 and p < t:
            rows.append({"index": i, "path": str(paths[i]), "true": DISPLAY_NAMES[MELANOMA],
                         "predicted": DISPLAY_NAMES[CLASS_NAMES[call]] if call != _MEL else "Not urgent",
                         "probability": 1.0 - p})
        elif melanoma[i] == 0 and p >= t:
            rows.append({"index": i, "path": str(paths[i]), "true": "Not melanoma",
                         "predicted": DISPLAY_NAMES[MELANOMA], "probability": p})
    rows.sort(key=lambda r: -r["probability"])
    return rows[: N_WRONG * 3]  # spare candidates for unreadable files


# --- figures -------------------------------------------------------------------------------


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
        fpr, tpr, _ = roc_curve(melanoma, probs[:, _MEL])
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


# --- PDF -----------------------------------------------------------------------------------


def _fmt_ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    s = f"{d['value']:.{digits}f}"
    if d.get("ci_low") is not None and d.get("ci_high") is not None:
        s += f" [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"
    return s


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _write_pdf(metrics: dict, fig_dir: Path, path: Path) -> None:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_CENTER, TA_RIGHT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Image as RLImage
    from reportlab.platypus import KeepInFrame, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    margin = 1.2 * cm
    width, height = A4[0] - 2 * margin, A4[1] - 2 * margin
    ss = getSampleStyleSheet()
    h1 = ParagraphStyle("h1", parent=ss["Title"], fontSize=15, leading=18, spaceAfter=2)
    sub = ParagraphStyle("sub", parent=ss["Normal"], fontSize=7.5, leading=9.5,
                         textColor=colors.HexColor("#444444"), alignment=TA_CENTER)
    h2 = ParagraphStyle("h2", parent=ss["Heading3"], fontName="Helvetica-Bold", fontSize=9.5,
                        leading=11, spaceBefore=5, spaceAfter=2)
    cell = ParagraphStyle("cell", parent=ss["Normal"], fontSize=7, leading=8.5)
    num = ParagraphStyle("num", parent=cell, alignment=TA_RIGHT)
    head = ParagraphStyle("head", parent=cell, fontName="Helvetica-Bold", alignment=TA_CENTER)
    big = ParagraphStyle("big", parent=cell, fontSize=9, leading=11, alignment=TA_CENTER)
    note = ParagraphStyle("note", parent=cell, fontSize=6, leading=7.5,
                          textColor=colors.HexColor("#555555"))

    mel, th = metrics["melanoma"], metrics["thresholds"]
    nine = metrics["nine_class"]
    grid = colors.HexColor("#BBBBBB")
    shade = colors.HexColor("#EEF2F7")

    story = [
        Paragraph(_esc(metrics["title"]), h1),
        Paragraph(
            f"Model evaluation &middot; {metrics['n']} images ({metrics['n_nine_class']} with nine-class "
            f"labels, {metrics['n_melanoma_only']} melanoma/not-melanoma only; {metrics['n_melanoma']} "
            f"melanoma) &middot; 95% percentile-bootstrap CIs ({metrics['n_boot']} resamples, seed "
            f"{metrics['seed']}) &middot; {metrics['created_at']}", sub),
        Spacer(1, 5),
    ]

    headline = [
        [Paragraph(t, head) for t in (
            "Melanoma vs rest<br/>ROC AUC",
            f"Melanoma sensitivity<br/>at urgent threshold {th['urgent_melanoma']:.2f}",
            f"Melanoma specificity<br/>at urgent threshold {th['urgent_melanoma']:.2f}",
            "Balanced accuracy<br/>(nine classes)",
            "Calibration error<br/>(top-label ECE)")],
        [Paragraph(_ci_html(d), big) for d in (
            mel["auc"], mel["sensitivity"], mel["specificity"], metrics["balanced_accuracy"],
            metrics["ece"])],
    ]
    t = Table(headline, colWidths=[width / 5] * 5)
    t.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.5, grid),
        ("BACKGROUND", (0, 0), (-1, 0), shade),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]))
    story.append(t)
    soon = metrics["soon"]
    story.append(Spacer(1, 3))
    story.append(Paragraph(
        f"<b>Soon</b> (BCC + SCC + actinic keratosis probability &ge; {th['soon_keratinocyte']:.2f}): "
        f"sensitivity {_fmt_ci(soon['sensitivity'])}, specificity {_fmt_ci(soon['specificity'])} "
        f"(n = {soon['n']}, {soon['n_positive']} positive). "
        f"<b>Triage levels</b>: " + ", ".join(f"{k} {v}" for k, v in metrics["triage_counts"].items())
        + f". <b>Accuracy</b> {_fmt(nine['accuracy'])}, macro F1 {_fmt(nine['macro']['f1'])}, "
        f"macro AUC {_fmt(nine['macro']['auc'])}.", cell))

    rows = [[Paragraph(h, head) for h in ("Class", "Support", "Precision", "Recall", "F1", "ROC AUC")]]
    for name in CLASS_NAMES:
        pc = nine["per_class"][name]
        rows.append([Paragraph(DISPLAY_NAMES[name], cell)] + [Paragraph(v, num) for v in (
            str(pc["support"]), _fmt(pc["precision"]), _fmt(pc["recall"]), _fmt(pc["f1"]),
            _fmt(pc["auc"]))])
    mac = nine["macro"]
    rows.append([Paragraph("<b>Macro (classes present)</b>", cell)] + [Paragraph(f"<b>{v}</b>", num) for v in (
        str(nine["n"]), _fmt(mac["precision"]), _fmt(mac["recall"]), _fmt(mac["f1"]), _fmt(mac["auc"]))])
    class_table = Table(rows, colWidths=[3.7 * cm] + [1.5 * cm] * 5)
    class_table.setStyle(TableStyle([
        ("FONTSIZE", (0, 0), (-1, -1), 7),
        ("GRID", (0, 0), (-1, -1), 0.4, grid),
        ("BACKGROUND", (0, 0), (-1, 0), shade),
        ("BACKGROUND", (0, -1), (-1, -1), shade),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]))

    side = [Paragraph("Per source", h2)]
    if "per_source" in metrics:
        srows = [[Paragraph(h, head) for h in ("Source", "n", "Mel AUC", "Bal. acc.")]]
        for src, d in metrics["per_source"].items():
            srows.append([Paragraph(_esc(src), cell)] + [Paragraph(v, num) for v in (
            str(d["n"]), _fmt(d["melanoma_auc"]), _fmt(d["balanced_accuracy"]))])
        st = Table(srows, colWidths=[2.9 * cm, 1.2 * cm, 1.4 * cm, 1.4 * cm])
        st.setStyle(TableStyle([
            ("FONTSIZE", (0, 0), (-1, -1), 7), ("GRID", (0, 0), (-1, -1), 0.4, grid),
            ("BACKGROUND", (0, 0), (-1, 0), shade), ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
        ]))
        side.append(st)
    else:
        side.append(Paragraph("No source information given.", cell))
    side.append(Paragraph("Thresholds", h2))
    side.append(Paragraph(
        f"urgent (melanoma) {th['urgent_melanoma']:.3f}; soon (keratinocyte) "
        f"{th['soon_keratinocyte']:.3f}; minimum confidence {th['min_confidence']:.3f}. "
        "Thresholds come from the model store; probabilities are the calibrated outputs. "
        + ("Class calls (per-class table, confusion matrix) are prior-corrected: argmax of "
           "log p + the version's class bias." if th.get("class_bias") else
           "Class calls are the most probable class."), cell))

    left_w = 3.7 * cm + 5 * 1.5 * cm
    top_row = Table([[[Paragraph("Per class (nine-class labelled images)", h2), class_table], side]],
                    colWidths=[left_w + 0.4 * cm, width - left_w - 0.4 * cm])
    top_row.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                 ("LEFTPADDING", (0, 0), (-1, -1), 0),
                                 ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
    story.append(top_row)
    story.append(Spacer(1, 4))

    half = width / 2 - 0.1 * cm
    figs = Table(
        [[_rl_image(fig_dir / CONFUSION_PNG, half, RLImage), _rl_image(fig_dir / ROC_PNG, half, RLImage)],
         [_rl_image(fig_dir / RELIABILITY_PNG, half, RLImage),
          Paragraph(_figure_notes(metrics), note)]],
        colWidths=[width / 2, width / 2])
    figs.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("ALIGN", (0, 0), (-1, -1), "CENTER"),
                              ("LEFTPADDING", (0, 0), (-1, -1), 1), ("RIGHTPADDING", (0, 0), (-1, -1), 1),
                              ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))
    story.append(figs)

    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=margin, rightMargin=margin,
                            topMargin=margin, bottomMargin=margin, title=metrics["title"],
                            author="melanoma-triage", subject="Model evaluation")
    # Shrink rather than spill: the report is one page by design.
    doc.build([KeepInFrame(width, height, story, mode="shrink")])


def _esc(s: str) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _ci_html(d: dict) -> str:
    if d.get("value") is None:
        return "n/a"
    s = f"<b>{d['value']:.3f}</b>"
    if d.get("ci_low") is not None and d.get("ci_high") is not None:
        s += f"<br/><font size=7>[{d['ci_low']:.3f}, {d['ci_high']:.3f}]</font>"
    return s


def _figure_notes(metrics: dict) -> str:
    tbt = metrics["triage_by_truth"]
    lines = ["<b>Triage level by truth</b> (rows: truth; urgent / soon / routine / indeterminate)"]
    names = {"melanoma": "Melanoma", "soon_class": "BCC / SCC / AK", "other": "Other nine-class",
             "not_melanoma_unspecified": "Not melanoma (2017)"}
    for key, label in names.items():
        if key in tbt:
            d = tbt[key]
            lines.append(f"{label}: {d['urgent']} / {d['soon']} / {d['routine']} / {d['indeterminate']}")
    lines.append("")
    lines.append(
        "<b>Reading the figures.</b> Confusion matrix rows are true classes normalised to 1 "
        "(row totals in brackets). ROC: thin lines are one-vs-rest per class on nine-class "
        "labelled images; the red line is melanoma vs rest on all images, the circle the "
        "operating point at the urgent threshold. Reliability: bars are accuracy per "
        f"confidence bin ({metrics['ece']['n_bins']} equal-width bins); hatched gap to the "
        "diagonal shows over- or under-confidence; below, how many images fall in each bin. "
        "The most confidently wrong images are in confidently_wrong.png; all numbers are in "
        "metrics.json.")
    return "<br/>".join(lines)


def _rl_image(path: Path, max_width: float, rl_image_cls):
    with Image.open(path) as im:
        w, h = im.size
    return rl_image_cls(str(path), width=max_width, height=max_width * h / w)
