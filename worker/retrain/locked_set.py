"""The locked evaluation set: champion and challenger are always compared on it, and no
challenger is ever trained on it.

Every image a retraining has seen gets a role, ``eval`` or ``train``, recorded once in
``<model store>/evaluation/assignments.csv`` and never changed afterwards (the file only
grows), so the set never moves between cycles. The first time an image is seen:

1. **Base data** (``training_data_dirs``), in this order:
   a. another image of the same lesion already has a role: the same role (no lesion on
      both sides);
   b. the current champion's ``split.csv`` lists it: ``eval`` if it was in the champion's
      test split (the champion never trained on it), else ``train`` (evaluating the
      champion on its own training images would flatter it);
   c. otherwise a content-defined bucket: ``eval`` when
      ``bucket("lesion:" + lesion_id) < fraction``.
2. **Confirmed cases** (ground truth that came back): ``eval`` when
   ``bucket("confirmed:" + sha256 of the archived file) < fraction``.

``bucket`` maps a key to [0, 1) through SHA-256, so the assignment depends on content only,
not on order, time or machine.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

FOLDER = "evaluation"
FILE = "assignments.csv"
COLUMNS = ("key", "sha256", "lesion_id", "origin", "role", "rule", "assigned_at")
EVAL, TRAIN = "eval", "train"


def bucket(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / 16**13


class LockedSet:
    def __init__(self, store_root: Path, fraction: float) -> None:
        if not 0 < fraction < 1:
            raise ValueError("the evaluation fraction must be between 0 and 1")
        self.path = Path(store_root) / FOLDER / FILE
        self.fraction = fraction
        self.table = self._load()
        self._new: list[dict] = []

    def _load(self) -> pd.DataFrame:
        if self.path.is_file():
            return pd.read_csv(self.path, dtype=str, keep_default_na=False)
        return pd.DataFrame(columns=list(COLUMNS), dtype=str)

    def _roles(self) -> dict[str, str]:
        return dict(zip(self.table["key"], self.table["role"]))

    def _record(self, key: str, sha256: str, lesion_id: str, origin: str, role: str, rule: str) -> None:
        self._new.append({"key": key, "sha256": sha256, "lesion_id": lesion_id, "origin": origin,
                          "role": role, "rule": rule,
                          "assigned_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def assign_base(self, df: pd.DataFrame, champion_split: pd.DataFrame | None) -> pd.Series:
        """A role per row of a resolved manifest (columns sha256, lesion_id)."""
        known = self._roles()
        lesion_roles = {lid: role for lid, role in zip(self.table["lesion_id"], self.table["role"])
                        if lid and role}
        split = {}
        if champion_split is not None and {"sha256", "subset"} <= set(champion_split.columns):
            split = dict(zip(champion_split["sha256"], champion_split["subset"]))
        roles = []
        for sha, lesion in zip(df["sha256"], df["lesion_id"].astype(str)):
            key = f"base:{sha}"
            if key in known:
                roles.append(known[key])
                continue
            if lesion in lesion_roles:
                role, rule = lesion_roles[lesion], "same-lesion"
            elif sha in split:
                role = EVAL if split[sha] == "test" else TRAIN
                rule = f"champion-split-{split[sha]}"
            else:
                role = EVAL if bucket(f"lesion:{lesion}") < self.fraction else TRAIN
                rule = "hash-bucket"
            known[key] = role
            lesion_roles[lesion] = role
            self._record(key, sha, lesion, "base", role, rule)
            roles.append(role)
        return pd.Series(roles, index=df.index, name="role")

    def assign_confirmed(self, sha256s: list[str]) -> list[str]:
        known = self._roles()
        roles = []
        for sha in sha256s:
            key = f"confirmed:{sha}"
            if key not in known:
                role = EVAL if bucket(key) < self.fraction else TRAIN
                known[key] = role
                self._record(key, sha, "", "confirmed", role, "hash-bucket")
            roles.append(known[key])
        return roles

    def save(self) -> int:
        """Append the new assignments (atomic replace); the number appended."""
        if not self._new:
            return 0
        table = pd.concat([self.table, pd.DataFrame(self._new, columns=list(COLUMNS))], ignore_index=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".assignments.", suffix=".csv")
        with os.fdopen(fd, "w", newline="") as f:
            table.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        n = len(self._new)
        self.table, self._new = table, []
        return n
