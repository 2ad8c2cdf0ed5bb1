"""The notebook's "visualise the data" step as a command: what the training set holds.

Looking before training is how the class imbalance, the mixed image sizes and the rows that
carry only a melanoma / not-melanoma label get noticed; this writes the same views as files
(class distribution per source, a seeded grid of samples per class, image sizes) and a text
summary that can be pasted into a training record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from schemas.classes import CLASS_NAMES, DISPLAY_NAMES
from worker.training.figures import load_thumbnail, save_figure

DISTRIBUTION_PNG = "class_distribution.png"
SAMPLES_PNG = "samples_grid.png"
SIZES_PNG = "image_sizes.png"
SUMMARY_TXT = "summary.txt"

#: Categories for rows without a nine-class label (e.g. ISIC 2017: melanoma yes/no only).
MELANOMA_ONLY = "melanoma (binary label only)"
NOT_MELANOMA_ONLY = "not melanoma (binary label only)"

REQUIRED_COLUMNS = ("path", "source", "image_id", "lesion_id", "label", "melanoma", "sha256", "width", "height")


def _categories(manifest: pd.DataFrame) -> pd.Series:
    label = manifest["label"].astype(object).where(manifest["label"].notna(), None)
    unknown = [v for v in label.dropna().unique() if v not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"labels outside the nine-class label space: {sorted(map(str, unknown))}")
    binary = np.where(manifest["melanoma"].astype(int) == 1, MELANOMA_ONLY, NOT_MELANOMA_ONLY)
    return pd.Series(np.where(label.isna(), binary, label), index=manifest.index, dtype=object)


def _display(category: str) -> str:
    return DISPLAY_NAMES.get(category, category[0].upper() + category[1:])


def describe_dataset(manifest: pd.DataFrame, out_dir: Path, samples_per_class: int = 6, seed: int = 0) -> str:
    """Write class_distribution.png, samples_grid.png, image_sizes.png and summary.txt
    under ``out_dir``; return the summary text."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = manifest.reset_index(drop=True).copy()
    df["category"] = _categories(df)
    df["source"] = df["source"].astype(str)
    order = [c for c in (*CLASS_NAMES, MELANOMA_ONLY, NOT_MELANOMA_ONLY) if c in set(df["category"])]
    # Keep every nine-class name on the axis, even when absent: an empty class is news.
    axis_order = list(CLASS_NAMES) + [c for c in (MELANOMA_ONLY, NOT_MELANOMA_ONLY) if c in order]
    counts = pd.crosstab(df["category"], df["source"]).reindex(axis_order, fill_value=0)

    _plot_distribution(counts, out_dir / DISTRIBUTION_PNG)
    _plot_samples(df, order, samples_per_class, seed, out_dir / SAMPLES_PNG)
    _plot_sizes(df, out_dir / SIZES_PNG)
    text = _summary(df, counts)
    (out_dir / SUMMARY_TXT).write_text(text)
    return text


def _plot_distribution(counts: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(8, 0.42 * len(counts) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    names = [_display(c) for c in counts.index]
    y = np.arange(len(counts))[::-1]
    left = np.zeros(len(counts))
    for i, src in enumerate(counts.columns):
        ax.barh(y, counts[src].to_numpy(), left=left, color=f"C{i}", label=src, edgecolor="white", lw=0.5)
        left += counts[src].to_numpy()
    for yy, total in zip(y, left):
        ax.text(total, yy, f" {int(total)}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("Images")
    ax.set_xlim(0, max(left.max(), 1) * 1.12)
    ax.set_title("Images per class and source (stacked)", fontsize=10)
    ax.legend(title="Source", fontsize=8, title_fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def _plot_samples(df: pd.DataFrame, order: list[str], k: int, seed: int, path: Path) -> None:
    rng = np.random.default_rng(seed)
    k = max(1, k)
    rows = max(1, len(order))
    fig = Figure(figsize=(1.35 * k + 1.9, 1.35 * rows + 0.5), layout="constrained")
    fig.suptitle(f"Random samples per class (seed {seed})", fontsize=10)
    axes = fig.subplots(rows, k, squeeze=False)
    for r, cat in enumerate(order):
        idx = df.index[df["category"] == cat].to_numpy()
        chosen = rng.choice(idx, size=min(k, idx.size), replace=False) if idx.size else []
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel("\n".join(_wrap(_display(cat), 18)) + f"\n(n={idx.size})", fontsize=7,
                              rotation=0, ha="right", va="center")
            if c >= len(chosen):
                continue
            img = load_thumbnail(str(df.at[chosen[c], "path"]), 128)
            if img is None:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=6, color="darkred",
                        transform=ax.transAxes)
            else:
                ax.imshow(img)
            ax.set_title(str(df.at[chosen[c], "source"])[:18], fontsize=5.5, pad=2)
    save_figure(fig, path)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [text]


def _plot_sizes(df: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    sizes = df.groupby(["source", "width", "height"]).size().reset_index(name="n")
    scale = 600 / max(1, sizes["n"].max())
    for i, (src, g) in enumerate(sizes.groupby("source")):
        ax.scatter(g["width"], g["height"], s=np.maximum(g["n"] * scale, 12), alpha=0.55, color=f"C{i}",
                   edgecolor="black", lw=0.5, label=f"{src} ({int(g['n'].sum())})")
        for _, row in g.nlargest(3, "n").iterrows():
            ax.annotate(f"{int(row['width'])}x{int(row['height'])}: {int(row['n'])}",
                        (row["width"], row["height"]), xytext=(6, 6), textcoords="offset points", fontsize=7)
    lo = min(df["width"].min(), df["height"].min())
    hi = max(df["width"].max(), df["height"].max())
    pad = max(10, (hi - lo) * 0.15)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls=":", color="grey", lw=0.8, label="square")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("Width (px)")
    ax.set_ylabel("Height (px)")
    ax.set_title("Image sizes per source (marker area ~ number of images)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _summary(df: pd.DataFrame, counts: pd.DataFrame) -> str:
    lines = [f"Images: {len(df)} from {df['source'].nunique()} source(s)", ""]
    table = counts.copy()
    table.index = [_display(c) for c in table.index]
    table.columns.name = None
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    lines += ["Images per class and source:", table.to_string(), ""]

    nine = counts.loc[list(CLASS_NAMES)].sum(axis=1)
    present = nine[nine > 0]
    if len(present):
        biggest, smallest = present.idxmax(), present.idxmin()
        lines.append(
            f"Imbalance ratio (largest / smallest non-empty class): {present.max() / present.min():.1f} "
            f"({_display(biggest)} {int(present.max())} / {_display(smallest)} {int(present.min())})"
        )
    absent = [_display(c) for c in nine.index[nine == 0]]
    lines.append("Classes with no images: " + (", ".join(absent) if absent else "none"))
    binary = int(df["category"].isin([MELANOMA_ONLY, NOT_MELANOMA_ONLY]).sum())
    lines.append(f"Rows with a melanoma / not-melanoma label only: {binary} "
                 f"({int((df['category'] == MELANOMA_ONLY).sum())} melanoma)")
    lines.append(f"Melanoma overall: {int(df['melanoma'].astype(int).sum())} of {len(df)}")
    lines.append("")

    lines.append("Image sizes (width x height) per source:")
    for src, g in df.groupby("source"):
        common = g.groupby(["width", "height"]).size().sort_values(ascending=False)
        (w, h), n = common.index[0], common.iloc[0]
        lines.append(
            f"  {src}: width {int(g['width'].min())}-{int(g['width'].max())}, "
            f"height {int(g['height'].min())}-{int(g['height'].max())}; "
            f"most common {int(w)}x{int(h)} ({int(n)} of {len(g)})"
        )
    lines.append("")

    dup = df[df["sha256"].notna() & df.duplicated("sha256", keep=False)]
    n_groups = dup["sha256"].nunique()
    conflicting = sum(
        1 for _, g in dup.groupby("sha256") if g["category"].nunique() > 1
    )
    lines.append(f"Exact duplicate files (same sha256): {len(dup)} rows in {n_groups} group(s), "
                 f"{conflicting} group(s) with conflicting labels")
    ids = df[df["image_id"].notna()]
    multi = ids.groupby("image_id")["source"].nunique()
    lines.append(f"Image ids present in more than one source: {int((multi > 1).sum())}")
    lesions = df[df["lesion_id"].notna()].groupby("lesion_id").size()
    if len(lesions):
        lines.append(f"Lesions with several images: {int((lesions > 1).sum())} of {len(lesions)} "
                     f"(max {int(lesions.max())} images of one lesion)")
    return "\n".join(lines) + "\n"
