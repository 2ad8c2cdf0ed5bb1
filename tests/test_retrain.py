"""Scheduled retraining: gates, the locked evaluation set, a full cycle that accepts a better
challenger and refuses a shuffled-label one, the lease against concurrent runs, and crashes
half-way that leave the store valid. Tiny generated data; a tiny CNN trainer."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, update

from tests.conftest import make_settings
from tests.retraingen import png_bytes, tiny_lesion, write_tiny_dataset
from worker.classify.export import ensure_export
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import GroundTruth, Image, Lock, ModelEvent, RetrainRun, utcnow
from worker.intake import archive
from worker.retrain import gates
from worker.retrain.cycle import run_retrain
from worker.retrain.locked_set import LockedSet, bucket
from worker.store.versions import ModelStore

RELAXED = gates.GatePolicy(max_ece=0.5, min_positives=3, min_negatives=3, n_boot=500)


# ----------------------------------------------------------------------------- gates

def _scores(version, auc=0.9, sens=0.96, ece=0.05, n=100, pos=20):
    return gates.ModelScores(version, n, pos, auc, 0.3, sens, 0.7, ece, n)


def test_gate_accepts_a_non_inferior_challenger():
    d = gates.decide(_scores("a"), _scores("b"), {"delta": 0.01, "low": -0.015, "high": 0.03}, gates.GatePolicy())
    assert d.promote and d.reasons[0].startswith("every gate passed")


@pytest.mark.parametrize("diff,chall,reason", [
    ({"delta": -0.01, "low": -0.05, "high": 0.02}, {}, "lower bound"),
    ({"delta": None, "low": None, "high": None}, {}, "cannot be estimated"),
    ({"delta": 0.0, "low": 0.0, "high": 0.0}, {"sens": 0.90}, "sensitivity"),
    ({"delta": 0.0, "low": 0.0, "high": 0.0}, {"sens": None}, "undefined"),
    ({"delta": 0.0, "low": 0.0, "high": 0.0}, {"ece": 0.2}, "calibration"),
    ({"delta": 0.0, "low": 0.0, "high": 0.0}, {"pos": 4}, "too small"),
])
def test_gate_refuses_with_its_reason(diff, chall, reason):
    d = gates.decide(_scores("a"), _scores("b", **chall), diff, gates.GatePolicy())
    assert not d.promote and any(reason in r for r in d.reasons)


def test_paired_bootstrap_sees_a_worse_model():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(70)].astype(int)
    good = y * 0.6 + rng.uniform(0, 0.5, 100)
    noise = rng.uniform(0, 1, 100)
    diff = gates.paired_auc_difference(y, good, noise, n_boot=300)
    from sklearn.metrics import roc_auc_score

    assert diff["delta"] == pytest.approx(roc_auc_score(y, noise) - roc_auc_score(y, good))
    assert diff["delta"] < -0.2 and diff["high"] < 0
    same = gates.paired_auc_difference(y, good, good, n_boot=100)
    assert same["delta"] == same["low"] == same["high"] == 0


# ----------------------------------------------------------------------------- locked set

def test_locked_set_never_moves_and_follows_the_champion_split(tmp_path):
    base = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(200)],
                         "lesion_id": [f"L{i // 2}" for i in range(200)]})  # two images per lesion
    split = pd.DataFrame({"sha256": base["sha256"][:10], "subset": ["test"] * 5 + ["train"] * 5})
    ls = LockedSet(tmp_path, 0.2)
    roles = ls.assign_base(base, split)
    assert list(roles[:4]) == ["eval"] * 4 and list(roles[6:10]) == ["train"] * 4
    # images 4 and 5 are one lesion: the first seen decides for both (no lesion on both sides)
    assert roles[4] == roles[5] == "eval"
    assert (roles.groupby(base["lesion_id"]).nunique() == 1).all()
    assert 0.05 < (roles[10:] == "eval").mean() < 0.4
    ls.save()
    # a later cycle with another champion split, shuffled rows and new data: old roles kept
    again = LockedSet(tmp_path, 0.2)
    more = pd.concat([base, pd.DataFrame({"sha256": ["f" * 64], "lesion_id": ["NEW"]})])
    shuffled = more.sample(frac=1, random_state=1).reset_index(drop=True)
    other_split = pd.DataFrame({"sha256": base["sha256"], "subset": "train"})
    new_roles = again.assign_base(shuffled, other_split)
    old = dict(zip(base["sha256"], roles))
    assert all(old[s] == r for s, r in zip(shuffled["sha256"], new_roles) if s in old)
    assert again.save() == 1
    assert again.assign_confirmed(["ab" * 32]) == [
        "eval" if bucket("confirmed:" + "ab" * 32) < 0.2 else "train"]


# ----------------------------------------------------------------------------- cycles

@pytest.fixture
def retrain_env(tmp_path, tiny_model_dir):
    def make(per_class=25, **overrides):
        values = dict(training_data_dirs=[write_tiny_dataset(tmp_path / "data", per_class)],
                      retrain_trainer="tests.retraingen:tiny_trainer", retrain_eval_fraction=0.3)
        values.update(overrides)
        settings = make_settings(tmp_path / "home", **values)
        settings.ensure_folders()
        upgrade(settings.database_url)
        store = ModelStore(settings.model_store_dir, export=ensure_export)
        store.set_current(store.add_version(tiny_model_dir))
        engine = make_engine(settings.database_url)
        engines.append(engine)
        return settings, store, make_session_factory(engine)

    engines: list = []
    yield make
    for e in engines:
        e.dispose()


def _confirm(settings, sessions, cls: str, seed: int) -> None:
    data = png_bytes(tiny_lesion(cls, seed))
    sha = archive.sha256_bytes(data)
    path = archive.store(settings.archive_dir, data, sha)
    with sessions.begin() as s:
        image = Image(sha256=sha, archive_path=str(path), source_door="api")
        s.add(image)
        s.flush()
        s.add(GroundTruth(image_id=image.id, diagnosis=cls, source="histopathology", recorded_by="lab"))


def _store_is_valid(store: ModelStore) -> None:
    for version in store.list_versions():
        store.verify(version)
    assert store.current_version() in store.list_versions()


@pytest.mark.slow
def test_cycle_promotes_a_better_challenger_and_refuses_a_shuffled_one(retrain_env):
    settings, store, sessions = retrain_env()
    for i in range(12):
        _confirm(settings, sessions, ["melanoma", "nevus", "basal_cell_carcinoma"][i % 3], 9000 + i)

    better = run_retrain(settings, policy=RELAXED, sessions=sessions)
    assert better.state == "promoted", better.decision.get("reasons") or better.error
    assert store.current_version() == better.challenger != "tiny-1"
    assert better.decision["auc_difference"]["low"] > 0
    data = better.decision["data"]
    assert data["confirmed_decoded"] == 12 and data["confirmed_train"] + data["confirmed_eval"] == 12
    folder = store.version_dir(better.challenger)
    assert store.metadata(better.challenger).parent_version == "tiny-1"
    assert (folder / "locked_evaluation.json").is_file()
    # the challenger never trained on the locked set
    locked = pd.read_csv(store.root / "evaluation" / "assignments.csv", dtype=str)
    eval_sha = set(locked.loc[locked["role"] == "eval", "sha256"])
    trained_on = pd.read_csv(folder / "split.csv", dtype=str)
    assert eval_sha and not eval_sha & set(trained_on["sha256"])
    # the trainer got the rows as gathered: confirmed cases keyed by their archived sha256
    confirmed_train = set(locked.loc[(locked["origin"] == "confirmed") & (locked["role"] == "train"), "sha256"])
    assert set(trained_on.loc[trained_on["source"] == "confirmed", "sha256"]) == confirmed_train
    assert len(confirmed_train) == data["confirmed_train"] > 0

    shuffled = run_retrain(settings, policy=RELAXED, sessions=sessions, negative_control=True)
    assert shuffled.state == "kept"
    assert store.current_version() == better.challenger  # the champion stays
    assert any("melanoma AUC difference" in r for r in shuffled.decision["reasons"])
    assert shuffled.challenger not in store.list_versions()  # a refused model is not stored
    with sessions() as s:
        runs = s.scalars(select(RetrainRun).order_by(RetrainRun.started_at)).all()
        events = s.scalars(select(ModelEvent)).all()
    assert [r.state for r in runs] == ["promoted", "kept"]
    assert runs[1].decision["promote"] is False and runs[1].champion_version == better.challenger
    assert [(e.action, e.actor) for e in events] == [("promote", "retrain")]
    assert not (settings.home / "retrain" / runs[1].id).exists()


def test_two_concurrent_retrains_one_runs_the_other_is_busy(retrain_env):
    settings, store, sessions = retrain_env(per_class=4)
    started, go_on = threading.Event(), threading.Event()

    def blocking_trainer(req):
        started.set()
        go_on.wait(30)
        raise RuntimeError("stop here (test)")

    first = {}
    t = threading.Thread(target=lambda: first.update(
        o=run_retrain(settings, trainer=blocking_trainer, policy=RELAXED, sessions=sessions)))
    t.start()
    assert started.wait(30)
    second = run_retrain(settings, trainer=blocking_trainer, policy=RELAXED, sessions=sessions)
    assert second.state == "busy" and second.run_id is None
    go_on.set()
    t.join(30)
    assert first["o"].state == "failed"
    with sessions() as s:
        assert s.scalars(select(RetrainRun.state)).all() == ["failed"]  # the busy one left no row
        assert s.get(Lock, "retrain") is None  # released


def test_trainer_dying_half_way_leaves_the_store_valid(retrain_env):
    settings, store, sessions = retrain_env(per_class=4, retrain_trainer="tests.retraingen:crashing_trainer")
    before = (store.list_versions(), store.current_version())
    outcome = run_retrain(settings, policy=RELAXED, sessions=sessions)
    assert outcome.state == "failed" and "died half-way" in outcome.error
    assert (store.list_versions(), store.current_version()) == before
    _store_is_valid(store)
    with sessions() as s:
        run = s.scalars(select(RetrainRun)).one()
        assert run.state == "failed" and "died half-way" in run.error
        assert s.get(Lock, "retrain") is None
    assert not (settings.home / "retrain" / run.id).exists()


def test_killed_retrain_leaves_store_valid_and_is_cleaned_up_by_the_next(retrain_env):
    settings, store, sessions = retrain_env(per_class=4, retrain_trainer="tests.retraingen:killed_trainer")
    before = (store.list_versions(), store.current_version())
    script = ("import sys; from worker.settings import Settings; from worker.retrain.cycle import run_retrain;"
              f"run_retrain(Settings(home={str(settings.home)!r}, training_data_dirs={[str(p) for p in settings.training_data_dirs]!r},"
              "retrain_trainer='tests.retraingen:killed_trainer', retrain_eval_fraction=0.3))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], timeout=120)
    assert proc.returncode == -9  # SIGKILL in the middle of training
    assert (store.list_versions(), store.current_version()) == before
    _store_is_valid(store)
    with sessions() as s:
        (dead,) = s.scalars(select(RetrainRun)).all()
        assert dead.state == "running" and s.get(Lock, "retrain") is not None
    assert (settings.home / "retrain" / dead.id / "challenger" / "model.keras").exists()
    # the dead holder stops renewing: its lease runs out
    assert run_retrain(settings, policy=RELAXED, sessions=sessions).state == "busy"
    with sessions.begin() as s:
        s.execute(update(Lock).values(expires_at=utcnow() - timedelta(seconds=1)))

    def crash(req):
        raise RuntimeError("second run stops too (test)")

    assert run_retrain(settings, trainer=crash, policy=RELAXED, sessions=sessions).state == "failed"
    with sessions() as s:
        s.expire_all()
        assert s.get(RetrainRun, dead.id).state == "failed"
        assert "abandoned" in s.get(RetrainRun, dead.id).error
    assert not (settings.home / "retrain" / dead.id).exists()
    _store_is_valid(store)
