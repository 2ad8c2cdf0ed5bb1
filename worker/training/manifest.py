"""One manifest over every data layout: a row per image file found under the data roots.

Layouts recognised (searched at the given roots and up to three folder levels below):

* folder-per-class (``isic-9class``): ``<dir>/<class_name>/*.jpg`` with the nine class
  names as folder names (``<dir>`` may be ``train/``);
* ``images/`` + ``labels.csv`` with ``dx`` and ``lesion_id`` columns (``ham10000``);
* ``images/`` + ``labels.csv`` with a ``melanoma`` 0/1 column (``isic2017``); when it also has
  a ``diagnosis`` column (the challenge's three classes: melanoma, seborrheic_keratosis,
  nevus) that is the row's nine-class label;
* ``images/`` + ``labels.csv`` with ``class`` and ``lesion_id`` columns (``derm7pt``): ``class``
  is already one of the nine names; an empty ``class`` (melanosis, miscellaneous: no class of
  ours) is excluded with its reason (:attr:`ScanResult.excluded`); ``bis`` images are second
  views of a lesion and share its ``lesion_id``.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from schemas import CLASS_NAMES, MELANOMA

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "source", "image_id", "lesion_id", "label", "melanoma", "sha256", "width", "height",
)

SOURCE_NINE_CLASS = "isic-9class"
SOURCE_HAM = "ham10000"
SOURCE_ISIC2017 = "isic2017"
SOURCE_DERM7PT = "derm7pt"
#: The ISIC 2017 challenge's three diagnoses, all names of the product's label space.
ISIC2017_DIAGNOSES = frozenset({"melanoma", "seborrheic_keratosis", "nevus"})

#: HAM10000 dx codes onto the product's label space.
HAM_DX_TO_CLASS: dict[str, str] = {
    "akiec": "actinic_keratosis",
    "bcc": "basal_cell_carcinoma",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "nevus",
    "bkl": "pigmented_benign_keratosis",
    "vasc": "vascular_lesion",
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_ISIC_ID = re.compile(r"(ISIC_\d+)")


@dataclass
class ScanResult:
    manifest: pd.DataFrame
    #: Files that could not be decoded: dicts with path, source, image_id, error.
    unreadable: list[dict] = field(default_factory=list)
    #: Readable files left out on purpose: dicts with path, source, image_id, reason.
    excluded: list[dict] = field(default_factory=list)


def image_id_from_name(path: Path) -> str:
    """``ISIC_0025509(1).jpg`` -> ``ISIC_0025509``; other names keep their stem."""
    m = _ISIC_ID.search(path.name)
    return m.group(1) if m else path.stem


def _probe(path: Path) -> tuple[str, int, int]:
    """sha256 of the bytes and the decoded size; raises on an unreadable image."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # full decode: a truncated file fails here, not during training
        width, height = img.size
    return digest, width, height


def _class_dir(root: Path) -> Path | None:
    """The folder whose subfolders are class names, if ``root`` is a folder-per-class set."""
    for cand in (root, root / "train"):
        if cand.is_dir():
            subs = {p.name for p in cand.iterdir() if p.is_dir()}
            if subs and subs <= set(CLASS_NAMES) and len(subs) >= 2:
                return cand
    return None


def detect_layout(root: Path) -> str | None:
    """The source name of the layout at ``root``, or None."""
    labels = root / "labels.csv"
    if labels.is_file() and (root / "images").is_dir():
        header = set(pd.read_csv(labels, nrows=0).columns)
        if {"image_id", "class", "lesion_id", "melanoma"} <= header:
            return SOURCE_DERM7PT
        if {"image_id", "dx", "lesion_id"} <= header:
            return SOURCE_HAM
        if {"image_id", "melanoma"} <= header:
            return SOURCE_ISIC2017
    if _class_dir(root) is not None:
        return SOURCE_NINE_CLASS
    return None


def find_layouts(roots: list[Path], depth: int = 3) -> list[tuple[str, Path]]:
    """(source, folder) for every recognised layout under the roots, in a stable order."""
    found: list[tuple[str, Path]] = []

    def walk(d: Path, level: int) -> None:
        source = detect_layout(d)
        if source is not None:
            found.append((source, d))
            return
        if level >= depth:
            return
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            walk(sub, level + 1)

    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} does not exist")
        walk(root, 0)
    return found


def _rows_nine_class(folder: Path) -> list[dict]:
    class_dir = _class_dir(folder)
    assert class_dir is not None
    rows = []
    for cls_dir in sorted(p for p in class_dir.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                iid = image_id_from_name(f)
                rows.append({"path": f, "image_id": iid, "lesion_id": iid, "label": cls_dir.name,
                             "melanoma": int(cls_dir.name == MELANOMA)})
    return rows


def _isic2017_label(rec) -> str | None:
    """The three-class diagnosis of an ISIC 2017 row (None: an older melanoma-only file)."""
    diagnosis = getattr(rec, "diagnosis", None)
    if not isinstance(diagnosis, str) or not diagnosis.strip():
        return None
    diagnosis = diagnosis.strip()
    if diagnosis not in ISIC2017_DIAGNOSES:
        raise ValueError(f"ISIC 2017 diagnosis {diagnosis!r} is not one of {sorted(ISIC2017_DIAGNOSES)}")
    return diagnosis


def _labels_csv_row(rec, path: Path, source: str) -> dict:
    """One manifest row of a labels.csv layout; ``label`` None with ``excluded`` set when the
    row has no class of ours."""
    if source == SOURCE_HAM:
        label = HAM_DX_TO_CLASS[rec.dx.strip()]
        return {"path": path, "image_id": rec.image_id, "lesion_id": rec.lesion_id,
                "label": label, "melanoma": int(label == MELANOMA)}
    if source == SOURCE_DERM7PT:
        label = rec._asdict().get("class")
        label = label.strip() if isinstance(label, str) and label.strip() else None
        if label is not None and label not in CLASS_NAMES:
            raise ValueError(f"derm7pt class {label!r} is not one of the nine class names")
        row = {"path": path, "image_id": rec.image_id, "lesion_id": rec.lesion_id or rec.image_id,
               "label": label, "melanoma": int(label == MELANOMA)}
        if label is None:
            row["excluded"] = f"diagnosis {getattr(rec, 'diagnosis', '?')!r} has no class of the nine"
        return row
    label = _isic2017_label(rec)
    melanoma = int(float(rec.melanoma))
    if label is not None and melanoma != int(label == MELANOMA):
        raise ValueError(f"ISIC 2017 {rec.image_id}: melanoma={melanoma} but diagnosis {label}")
    return {"path": path, "image_id": rec.image_id, "lesion_id": rec.image_id,
            "label": label, "melanoma": melanoma}


def _labels_csv_rows(folder: Path, source: str) -> list[dict]:
    labels = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    files = {image_id_from_name(f): f for f in (folder / "images").iterdir()
             if f.suffix.lower() in IMAGE_SUFFIXES}
    rows = []
    for rec in labels.to_dict("records"):
        path = files.get(rec["image_id"])
        if path is None:
            continue  # listed but absent: nothing to train on (reported by the row count)
        rows.append(_labels_csv_row(_Record(rec), path, source))
    return rows


class _Record:
    """Attribute access to one labels.csv record (``class`` is a keyword, so not a namedtuple)."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)

    def _asdict(self) -> dict:
        return dict(self.__dict__)


def scan(roots: list[Path]) -> ScanResult:
    """Find every layout under ``roots``, hash and decode-check every image."""
    rows: list[dict] = []
    unreadable: list[dict] = []
    excluded: list[dict] = []
    for source, folder in find_layouts([Path(r) for r in roots]):
        raw = _rows_nine_class(folder) if source == SOURCE_NINE_CLASS else _labels_csv_rows(folder, source)
        for r in raw:
            if "excluded" in r:
                excluded.append({"path": str(r["path"]), "source": source, "image_id": r["image_id"],
                                 "reason": r["excluded"]})
                continue
            try:
                digest, w, h = _probe(r["path"])
            except Exception as exc:  # PIL raises many types for a broken file
                unreadable.append({"path": str(r["path"]), "source": source,
                                   "image_id": r["image_id"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            rows.append({**r, "path": str(r["path"]), "source": source, "sha256": digest,
                         "width": w, "height": h})
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    df["melanoma"] = df["melanoma"].astype(int)
    df["width"] = df["width"].astype(int)
    df["height"] = df["height"].astype(int)
    df["label"] = df["label"].astype(object).where(df["label"].notna(), None)
    return ScanResult(manifest=df.reset_index(drop=True), unreadable=unreadable, excluded=excluded)


def build_manifest(roots: list[Path]) -> pd.DataFrame:
    """The manifest alone (unreadable files left out); see :func:`scan` for those."""
    return scan(roots).manifest


def require_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the manifest columns in order (extra columns dropped); a precise error
    when one is missing, before any work is done on a frame handed in by a caller."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest frame lacks columns {missing}; needs {list(MANIFEST_COLUMNS)}")
    out = df[list(MANIFEST_COLUMNS)].reset_index(drop=True).copy()
    out["path"] = out["path"].astype(str)
    out["melanoma"] = out["melanoma"].astype(int)
    out["label"] = out["label"].astype(object).where(out["label"].notna(), None)
    bad = sorted({lb for lb in out["label"] if lb is not None and lb not in CLASS_NAMES})
    if bad:
        raise ValueError(f"manifest labels not in CLASS_NAMES: {bad}")
    return out


def manifest_sha256(df: pd.DataFrame) -> str:
    """Hash of a canonical CSV: content-defined, independent of row order and file location.

    Paths are left out so that the same data at another mount point hashes the same.
    """
    cols = [c for c in MANIFEST_COLUMNS if c != "path"]
    canon = df[cols].copy()
    canon["label"] = canon["label"].fillna("")
    canon = canon.sort_values(cols, kind="mergesort").reset_index(drop=True)
    return hashlib.sha256(canon.to_csv(index=False, lineterminator="\n").encode()).hexdigest()
