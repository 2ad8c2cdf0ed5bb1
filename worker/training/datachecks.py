"""Data checks run before every training: find the defects, report them, resolve them.

Resolution rules (one row per distinct image survives):

1. A *distinct image* is a connected group of files sharing a content hash or an ISIC
   image id (the same image id in several sets at different sizes is one image).
2. Label of a group:
   a. HAM10000 ``dx`` is histopathology-backed (or expert consensus with follow-up) and
      wins over ``isic-9class`` folder labels for the same image -- except where the folder
      label is a *refinement* of the HAM code: ``akiec`` covers actinic keratosis *and*
      intraepithelial carcinoma (Bowen's disease, squamous cell carcinoma in situ), so an
      image HAM calls ``akiec`` and every folder copy calls squamous_cell_carcinoma keeps
      squamous_cell_carcinoma (both are ``soon`` classes: triage is the same either way);
   b. with no HAM verdict, a group whose ``isic-9class`` copies sit under different class
      folders is dropped (we cannot tell which folder is right) -- unless the image has an
      ISIC 2017 melanoma verdict and exactly one of the folder labels agrees with it on the
      melanoma axis (e.g. melanoma vs seborrheic_keratosis with ISIC 2017 melanoma=1:
      melanoma); that folder label is kept;
   c. otherwise the nine-class label of its copies;
   d. a group with neither: the label its ISIC 2017 (three-class ``diagnosis``) and derm7pt
      copies agree on (dropped when they disagree); an ISIC 2017 file without ``diagnosis``
      gives the melanoma-only label (``label`` None);
   e. an ISIC 2017 melanoma label must agree with the resolved nine-class label on the
      melanoma axis, else the group is dropped.
   f. derm7pt rows without a class of ours (melanosis, miscellaneous) never enter the
      manifest; they are listed under ``excluded`` with the reason.
3. The kept file is the largest copy (most pixels; ties: HAM10000, ISIC 2017, isic-9class,
   derm7pt).
   Its ``lesion_id`` is the HAM10000 lesion id when the group has one.
4. Unreadable files never enter the manifest; they are listed here.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from schemas import CLASS_NAMES, MELANOMA
from worker.training.manifest import (
    MANIFEST_COLUMNS,
    SOURCE_DERM7PT,
    SOURCE_HAM,
    SOURCE_ISIC2017,
    SOURCE_NINE_CLASS,
    ScanResult,
)

#: (HAM10000 class, folder class) pairs where the folder label is a finer diagnosis the HAM
#: code includes (rule 2a): akiec = actinic keratosis + Bowen's disease (SCC in situ).
HAM_REFINEMENTS = {("actinic_keratosis", "squamous_cell_carcinoma")}
_SOURCE_PREFERENCE = {SOURCE_HAM: 0, SOURCE_ISIC2017: 1, SOURCE_NINE_CLASS: 2, SOURCE_DERM7PT: 3}


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def image_groups(df: pd.DataFrame, keys: tuple[str, ...] = ("sha256", "image_id")) -> pd.Series:
    """Connected components over shared values of ``keys``: a group label per row."""
    uf = UnionFind()
    for i, row in enumerate(df[list(keys)].itertuples(index=False)):
        node = ("row", i)
        for k, v in zip(keys, row):
            uf.union(node, (k, v))
    roots = [uf.find(("row", i)) for i in range(len(df))]
    codes = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return pd.Series([codes[r] for r in roots], index=df.index, name="group")


@dataclass
class CheckResult:
    resolved: pd.DataFrame  # manifest columns, one row per distinct image kept
    report: dict


def _counts(df: pd.DataFrame) -> dict:
    per_class = {c: int((df["label"] == c).sum()) for c in CLASS_NAMES}
    per_class["melanoma_only_positive"] = int((df["label"].isna() & (df["melanoma"] == 1)).sum())
    per_class["melanoma_only_negative"] = int((df["label"].isna() & (df["melanoma"] == 0)).sum())
    per_source = {s: int(n) for s, n in df["source"].value_counts().sort_index().items()}
    by_source_class = {
        s: {str(k): int(v) for k, v in g["label"].fillna(
            g["melanoma"].map({1: "melanoma_only_positive", 0: "melanoma_only_negative"})
        ).value_counts().sort_index().items()}
        for s, g in df.groupby("source")
    }
    return {"images": len(df), "per_class": per_class, "per_source": per_source,
            "per_source_class": by_source_class}


def _duplicate_findings(df: pd.DataFrame) -> dict:
    """Exact duplicates by content (within one set and across sets) and image ids present in
    several sets: report entries only, resolution happens per group."""
    dup_within, dup_across = [], []
    for digest, g in df.groupby("sha256"):
        if len(g) < 2:
            continue
        entry = {"sha256": digest, "files": g["path"].tolist(), "labels": g["label"].tolist(),
                 "sources": g["source"].tolist()}
        (dup_within if g["source"].nunique() == 1 else dup_across).append(entry)
    ids_across = []
    for iid, g in df.groupby("image_id"):
        if g["source"].nunique() > 1:
            ids_across.append({"image_id": iid, "sources": g["source"].tolist(),
                               "sizes": [f"{w}x{h}" for w, h in zip(g["width"], g["height"])],
                               "same_content": bool(g["sha256"].nunique() == 1)})
    return {"exact_duplicates_within_set": {"count": len(dup_within), "items": dup_within},
            "exact_duplicates_across_sets": {"count": len(dup_across), "items": dup_across},
            "same_image_id_across_sets": {"count": len(ids_across), "items": ids_across[:2000]}}


#: :func:`_group_label` verdict for a group that is dropped.
_DROP = object()


def _group_label(g: pd.DataFrame, conflicts: dict[str, list], decisions: Counter):
    """The resolved nine-class label of one image group (rules 2a-2e), None for a
    melanoma-only group, or ``_DROP``; conflicts and decisions are recorded on the way."""
    ham = g[g["source"] == SOURCE_HAM]
    nine = g[g["source"] == SOURCE_NINE_CLASS]
    mel_only = g[g["source"] == SOURCE_ISIC2017]
    ids = sorted(set(g["image_id"]))
    label = None
    if len(ham):
        if ham["label"].nunique() > 1:
            decisions["dropped_ham_self_conflict"] += 1
            return _DROP
        label = ham["label"].iloc[0]
        folder_labels = sorted(set(nine["label"]))
        if len(folder_labels) == 1 and (label, folder_labels[0]) in HAM_REFINEMENTS:
            label = folder_labels[0]
            decisions["ham_code_refined_by_folder"] += 1
        elif folder_labels and folder_labels != [label]:
            conflicts["ham_overrides_folder"].append(
                {"image_ids": ids, "ham_dx": label, "folder_labels": folder_labels})
            decisions["folder_label_overridden_by_ham"] += 1
    elif len(nine):
        if nine["label"].nunique() > 1:
            folder_labels = sorted(set(nine["label"]))
            arbiter = set(mel_only["melanoma"])
            agreeing = [lb for lb in folder_labels if arbiter == {int(lb == MELANOMA)}]
            resolved_by = agreeing[0] if len(agreeing) == 1 else None
            conflicts["nine_class_folders_disagree"].append(
                {"image_ids": ids, "folder_labels": folder_labels,
                 "files": nine["path"].tolist(), "resolved_by_isic2017": resolved_by})
            if resolved_by is None:
                decisions["dropped_folder_conflict"] += 1
                return _DROP
            decisions["folder_conflict_resolved_by_isic2017"] += 1
            label = resolved_by
        else:
            label = nine["label"].iloc[0]
    if label is None:
        others = g[g["source"].isin((SOURCE_ISIC2017, SOURCE_DERM7PT))]["label"].dropna()
        if others.nunique() > 1:
            conflicts["labelled_sources_disagree"].append({"image_ids": ids, "labels": sorted(set(others))})
            decisions["dropped_labelled_sources_conflict"] += 1
            return _DROP
        if len(others):
            label = others.iloc[0]
    if len(mel_only) and label is not None:
        mel_votes = set(mel_only["melanoma"])
        if mel_votes != {int(label == MELANOMA)}:
            conflicts["melanoma_axis_disagree"].append(
                {"image_ids": ids, "nine_class_label": label,
                 "isic2017_melanoma": sorted(int(v) for v in mel_votes)})
            decisions["dropped_melanoma_axis_conflict"] += 1
            return _DROP
    if label is None and mel_only["melanoma"].nunique() > 1:
        decisions["dropped_isic2017_self_conflict"] += 1
        return _DROP
    return label


def _kept_row(g: pd.DataFrame, label: str | None) -> pd.Series:
    """The largest copy of a group (rule 3), carrying the group's resolved label."""
    order = g.assign(_px=-(g["width"] * g["height"]),
                     _pref=g["source"].map(_SOURCE_PREFERENCE)).sort_values(["_px", "_pref", "path"])
    keep = order.iloc[0].copy()
    keep["label"] = label
    mel_only = g[g["source"] == SOURCE_ISIC2017]
    keep["melanoma"] = int(label == MELANOMA) if label is not None else int(mel_only["melanoma"].iloc[0])
    ham = g[g["source"] == SOURCE_HAM]
    if len(ham):
        keep["lesion_id"] = ham["lesion_id"].iloc[0]
    return keep


def check_and_resolve(scan: ScanResult) -> CheckResult:
    """Find the defects of ``scan`` and resolve them by the rules above: one row per image."""
    df = scan.manifest.reset_index(drop=True).copy()
    df["group"] = image_groups(df)
    report: dict = {"rules": __doc__.split("Resolution rules", 1)[1].strip(),
                    "input": _counts(df), "unreadable": scan.unreadable,
                    "excluded": getattr(scan, "excluded", []), **_duplicate_findings(df)}

    kept_rows, decisions = [], Counter()
    conflicts: dict[str, list] = {"nine_class_folders_disagree": [], "ham_overrides_folder": [],
                                  "melanoma_axis_disagree": [], "labelled_sources_disagree": []}
    for _, g in df.groupby("group", sort=True):
        label = _group_label(g, conflicts, decisions)
        if label is _DROP:
            continue
        decisions["kept"] += 1
        if len(g) > 1:
            decisions["merged_copies_removed"] += len(g) - 1
        kept_rows.append(_kept_row(g, label))

    resolved = pd.DataFrame(kept_rows, columns=list(MANIFEST_COLUMNS)).reset_index(drop=True)
    resolved["melanoma"] = resolved["melanoma"].astype(int)
    resolved["label"] = resolved["label"].astype(object).where(resolved["label"].notna(), None)
    report["conflicting_labels"] = {k: {"count": len(v), "items": v} for k, v in conflicts.items()}
    report["decisions"] = dict(decisions)
    report["final"] = _counts(resolved)
    return CheckResult(resolved=resolved, report=report)


def report_for_resolved(resolved: pd.DataFrame, origin: str = "a resolved manifest") -> dict:
    """The data-quality report of rows that were checked and resolved upstream.

    Retraining resolves its data once (base data through :func:`run_checks`, confirmed cases
    from the archive) and hands the trainer the rows: the trainer records what it got
    rather than checking it a second time.
    """
    counts = _counts(resolved)
    empty = {"count": 0, "items": []}
    return {"rules": f"Rows received from {origin}: checked and resolved before training.",
            "input": counts, "unreadable": [],
            "exact_duplicates_within_set": empty, "exact_duplicates_across_sets": empty,
            "same_image_id_across_sets": empty, "conflicting_labels": {},
            "decisions": {"kept": len(resolved)}, "final": counts}


def _md(report: dict) -> str:
    lines = ["# Data quality report", "", "## Resolution rules", "", report["rules"], ""]
    lines += ["## Findings", "",
              f"- unreadable files (excluded): {len(report['unreadable'])}",
              f"- files without a class of ours (excluded): {len(report.get('excluded', []))}",
              f"- exact duplicate groups within one set: {report['exact_duplicates_within_set']['count']}",
              f"- exact duplicate groups across sets: {report['exact_duplicates_across_sets']['count']}",
              f"- image ids present in several sets: {report['same_image_id_across_sets']['count']}"]
    for k, v in report["conflicting_labels"].items():
        lines.append(f"- conflicting labels, {k.replace('_', ' ')}: {v['count']}")
    lines += ["", "## Decisions", ""] + [f"- {k}: {v}" for k, v in sorted(report["decisions"].items())]
    for title, key in (("Before resolution", "input"), ("After resolution", "final")):
        c = report[key]
        lines += ["", f"## {title}: {c['images']} images", "", "| class | images |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in c["per_class"].items()]
        lines += ["", "| source | images |", "|---|---|"] + [f"| {k} | {v} |" for k, v in c["per_source"].items()]
    if report.get("excluded"):
        lines += ["", "## Excluded files", ""] + [f"- `{u['path']}`: {u['reason']}" for u in report["excluded"]]
    if report["unreadable"]:
        lines += ["", "## Unreadable files", ""] + [f"- `{u['path']}`: {u['error']}" for u in report["unreadable"]]
    return "\n".join(lines) + "\n"


def write_report(result: CheckResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_quality.json").write_text(json.dumps(result.report, indent=1, default=str))
    (out_dir / "data_quality.md").write_text(_md(result.report))


def run_checks(scan: ScanResult, out_dir: Path | None = None) -> CheckResult:
    """Check and resolve ``scan``; write data_quality.json/.md into ``out_dir`` when given."""
    result = check_and_resolve(scan)
    if out_dir is not None:
        write_report(result, out_dir)
    return result
