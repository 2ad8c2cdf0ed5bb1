"""One retraining run, end to end; called by the Celery task and by ``retrain --now``.

    lease (DB lock "retrain")  ->  RetrainRun row (running)
    -> gather: base data (training_data_dirs: manifest + data checks) and confirmed cases
       (archive + ground truth), roles from the locked set (worker.retrain.locked_set)
    -> stage the train-role images as data layouts under <home>/retrain/<run id>/data
    -> train a challenger into <home>/retrain/<run id>/challenger (never into the store)
    -> score champion and challenger on the same locked evaluation set
    -> gates (worker.retrain.gates) -> promote (add_version + CURRENT + ModelEvent) or keep
    -> RetrainRun row: promoted | kept | failed, with the decision and its reasons

Crash safety: nothing reaches the store before the gate has passed; ``add_version`` appears
atomically (rename) and CURRENT switches atomically, so a run that dies at any point leaves
the store as it was, or with one complete extra version. A dead run's lease expires (it is
renewed by a heartbeat while alive); the next run marks its RetrainRun row ``failed`` and
deletes its staging folder. A second run while one holds the lease returns ``busy`` without
touching anything, which also makes a broker redelivery harmless.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from schemas import CLASS_NAMES, MELANOMA, ModelMetadata
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import RetrainRun, utcnow
from worker.model_store import METADATA_FILE, MODEL_FILE, ModelStore
from worker.retrain import admin, gates, truth
from worker.retrain.locked_set import EVAL, TRAIN, LockedSet
from worker.retrain.lock import RETRAIN_LOCK, DbLease, current_holder, pointer_lock
from worker.retrain.training import Trainer, TrainRequest, load_trainer
from worker.settings import Settings

log = logging.getLogger(__name__)

MEL = CLASS_NAMES.index(MELANOMA)
STAGING = "retrain"
ACTOR = "retrain"
STEPS = ("lock", "gather data", "train challenger", "evaluate", "decide", "record")
Progress = Callable[[int, int, str], None]

_HAM_CODE = {"actinic_keratosis": "akiec", "basal_cell_carcinoma": "bcc", "dermatofibroma": "df",
             "melanoma": "mel", "nevus": "nv", "pigmented_benign_keratosis": "bkl",
             "vascular_lesion": "vasc"}


@dataclass
class Outcome:
    state: str  # promoted | kept | failed | busy
    run_id: str | None = None
    champion: str | None = None
    challenger: str | None = None
    decision: dict = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"state": self.state, "run_id": self.run_id, "champion": self.champion,
                "challenger": self.challenger, "decision": self.decision, "error": self.error}


def policy_from(settings: Settings) -> gates.GatePolicy:
    return gates.GatePolicy(
        auc_margin=settings.retrain_auc_margin, min_sensitivity=settings.retrain_min_sensitivity,
        max_ece=settings.retrain_max_ece, min_positives=settings.retrain_min_positives,
        min_negatives=settings.retrain_min_positives)


def _quiet(_step: int, _total: int, _msg: str) -> None:
    pass


# --------------------------------------------------------------------------- data

@dataclass
class Gathered:
    train_root: Path
    eval_frame: pd.DataFrame  # path, sha256, label, melanoma, origin
    counts: dict


def _materialise(cases: list[truth.ConfirmedCase], folder: Path) -> list[tuple[truth.ConfirmedCase, Path]]:
    """Decode each archived image once and write it as PNG (training tools read files)."""
    from PIL import Image as PILImage

    from worker.imaging.decode import decode_bytes
    from worker.intake import archive

    out = []
    for case in cases:
        try:
            rgb = decode_bytes(archive.load(case.archive_path)).rgb
        except Exception as exc:  # archive gone or unreadable: skip, counted by the caller
            log.warning("confirmed image %s skipped: %s", case.image_id, type(exc).__name__)
            continue
        path = folder / case.diagnosis / f"confirmed-{case.sha256[:20]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(rgb).save(path)
        out.append((case, path))
    return out


def _link(src: str | Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(Path(src).resolve())
    except OSError:
        shutil.copyfile(src, dst)


def _stage_training(rows: pd.DataFrame, confirmed: list[tuple[truth.ConfirmedCase, Path]], root: Path) -> None:
    """Train-role rows as layouts that worker.training.manifest reads back unchanged:
    HAM10000 rows keep their lesion ids (images/ + labels.csv), melanoma-only rows become an
    ISIC 2017 layout, every other labelled row a folder-per-class layout."""
    nine = root / "isic-9class"
    for name in CLASS_NAMES:
        (nine / name).mkdir(parents=True, exist_ok=True)
    ham_rows, mel_rows = [], []
    for r in rows.itertuples(index=False):
        suffix = Path(r.path).suffix.lower()
        if isinstance(r.label, str) and r.source == "ham10000" and r.label in _HAM_CODE:
            _link(r.path, root / "ham10000" / "images" / f"{r.image_id}{suffix}")
            ham_rows.append({"image_id": r.image_id, "dx": _HAM_CODE[r.label], "lesion_id": r.lesion_id})
        elif isinstance(r.label, str):
            _link(r.path, nine / r.label / f"{r.image_id}{suffix}")
        else:
            _link(r.path, root / "isic2017" / "images" / f"{r.image_id}{suffix}")
            mel_rows.append({"image_id": r.image_id, "melanoma": int(r.melanoma)})
    if ham_rows:
        pd.DataFrame(ham_rows).to_csv(root / "ham10000" / "labels.csv", index=False)
    if mel_rows:
        pd.DataFrame(mel_rows).to_csv(root / "isic2017" / "labels.csv", index=False)
    for case, path in confirmed:
        _link(path, nine / case.diagnosis / path.name)


def _negative_control(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Shuffle (label, melanoma) across the training rows: a challenger that must be refused
    (``retrain --negative-control``, a drill that shows the gate works on this deployment)."""
    rows = rows.copy()
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows["label"] = rows["label"].to_numpy()[perm]
    rows["melanoma"] = rows["melanoma"].to_numpy()[perm]
    return rows


def gather(settings: Settings, sessions: sessionmaker[Session], store: ModelStore,
           champion: str | None, stage: Path, negative_control: bool = False) -> Gathered:
    from worker.training import datachecks, manifest

    if not settings.training_data_dirs:
        raise ValueError("no base training data: set TRIAGE_TRAINING_DATA_DIRS")
    scan = manifest.scan([Path(p) for p in settings.training_data_dirs])
    base = datachecks.run_checks(scan, stage / "data_checks").resolved.reset_index(drop=True)
    with sessions() as s:
        cases = truth.confirmed_cases(s)

    split = None
    if champion is not None and (store.version_dir(champion) / "split.csv").is_file():
        split = pd.read_csv(store.version_dir(champion) / "split.csv", dtype=str)
    locked = LockedSet(store.root, settings.retrain_eval_fraction)
    base["role"] = locked.assign_base(base, split)
    case_roles = locked.assign_confirmed([c.sha256 for c in cases])
    locked.save()

    written = _materialise(cases, stage / "confirmed")
    role_of = {c.sha256: r for c, r in zip(cases, case_roles)}
    conf_train = [(c, p) for c, p in written if role_of[c.sha256] == TRAIN]
    conf_eval = [(c, p) for c, p in written if role_of[c.sha256] == EVAL]

    train_rows = base[base["role"] == TRAIN]
    if negative_control:  # the drill: shuffled base labels only, no (correct) confirmed cases
        train_rows = _negative_control(train_rows, seed=settings.retrain_train_args.get("seed", 42))
        conf_train = []
    _stage_training(train_rows, conf_train, stage / "data")

    base_eval = base[base["role"] == EVAL]
    eval_frame = pd.concat([
        pd.DataFrame({"path": base_eval["path"].astype(str), "sha256": base_eval["sha256"],
                      "label": base_eval["label"], "melanoma": base_eval["melanoma"].astype(int),
                      "origin": "base"}),
        pd.DataFrame({"path": [str(p) for _, p in conf_eval],
                      "sha256": [c.sha256 for c, _ in conf_eval],
                      "label": [c.diagnosis for c, _ in conf_eval],
                      "melanoma": [int(c.diagnosis == MELANOMA) for c, _ in conf_eval],
                      "origin": "confirmed"}),
    ], ignore_index=True)
    counts = {"base_images": int(len(base)), "base_train": int(len(train_rows)),
              "base_eval": int(len(base_eval)), "confirmed": len(cases),
              "confirmed_decoded": len(written), "confirmed_train": len(conf_train),
              "confirmed_eval": len(conf_eval), "eval_total": int(len(eval_frame)),
              "negative_control": negative_control}
    return Gathered(stage / "data", eval_frame, counts)


# --------------------------------------------------------------------------- scoring

def locked_probabilities(version_dir: Path, frame: pd.DataFrame, cache_dir: Path) -> np.ndarray:
    """Calibrated probabilities of one version folder on the locked set, in batches."""
    import keras
    import tensorflow as tf

    from worker.training import calibration, dataset

    meta = ModelMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())
    model = keras.saving.load_model(version_dir / MODEL_FILE, compile=False)
    images = dataset.build_cache(frame, meta.input_size, cache_dir, progress=False)
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    logits = [fn(tf.convert_to_tensor(images[i:i + 64], dtype=tf.float32)).numpy()
              for i in range(0, len(images), 64)]
    logits = np.concatenate(logits) if logits else np.zeros((0, len(CLASS_NAMES)))
    return calibration.softmax_t(logits, meta.temperature)


def score_both(store: ModelStore, champion: str | None, challenger_dir: Path, frame: pd.DataFrame,
               cache_dir: Path, policy: gates.GatePolicy) -> dict:
    labels = np.array([CLASS_NAMES.index(lb) if isinstance(lb, str) else -1 for lb in frame["label"]])
    y = frame["melanoma"].to_numpy().astype(int)
    chall_meta = ModelMetadata.model_validate_json((challenger_dir / METADATA_FILE).read_text())
    p_chall = locked_probabilities(challenger_dir, frame, cache_dir)
    chall = gates.score(chall_meta.version, p_chall, y, labels,
                        chall_meta.thresholds.urgent_melanoma, MEL)
    champ = diff = None
    if champion is not None:
        p_champ = locked_probabilities(store.version_dir(champion), frame, cache_dir)
        champ = gates.score(champion, p_champ, y, labels,
                            store.metadata(champion).thresholds.urgent_melanoma, MEL)
        diff = gates.paired_auc_difference(y, p_champ[:, MEL], p_chall[:, MEL], policy.n_boot,
                                           policy.confidence, policy.seed)
    return {"champion": champ, "challenger": chall, "auc_difference": diff}


# --------------------------------------------------------------------------- the run

def _abandon_stale_runs(sessions: sessionmaker[Session], home: Path) -> int:
    """Rows left 'running' by a run that died (we hold the lease: nobody else runs)."""
    with sessions.begin() as s:
        stale = s.scalars(select(RetrainRun.id).where(RetrainRun.state == "running")).all()
        if stale:
            s.execute(update(RetrainRun).where(RetrainRun.id.in_(stale))
                      .values(state="failed", finished_at=utcnow(),
                              error="abandoned: the process running it stopped before finishing"))
    for run_id in stale:
        shutil.rmtree(home / STAGING / run_id, ignore_errors=True)
    return len(stale)


def _finish(sessions: sessionmaker[Session], run_id: str, **values) -> None:
    with sessions.begin() as s:
        s.execute(update(RetrainRun).where(RetrainRun.id == run_id)
                  .values(finished_at=utcnow(), **values))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))


def run_retrain(settings: Settings, trigger: str = "manual", trainer: Trainer | None = None,
                policy: gates.GatePolicy | None = None, progress: Progress = _quiet,
                negative_control: bool = False, sessions: sessionmaker[Session] | None = None) -> Outcome:
    """One cycle. Returns ``busy`` at once when another run holds the lease."""
    engine = None
    if sessions is None:
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
    try:
        return _run(settings, sessions, trigger, trainer or load_trainer(settings.retrain_trainer),
                    policy or policy_from(settings), progress, negative_control)
    finally:
        if engine is not None:
            engine.dispose()


def _run(settings: Settings, sessions: sessionmaker[Session], trigger: str, trainer: Trainer,
         policy: gates.GatePolicy, progress: Progress, negative_control: bool) -> Outcome:
    total = len(STEPS)
    progress(1, total, "taking the retraining lock")
    lease = DbLease(sessions, RETRAIN_LOCK, ttl_s=settings.retrain_lock_ttl_s)
    if not lease.acquire():
        holder = current_holder(sessions, RETRAIN_LOCK)
        log.info("retraining already running (%s): nothing to do", holder)
        return Outcome(state="busy", error=f"another retraining holds the lock: {holder}")
    store = ModelStore(settings.model_store_dir)
    try:
        with lease.keep_alive():
            abandoned = _abandon_stale_runs(sessions, settings.home)
            champion = store.current_version()
            with sessions.begin() as s:
                run = RetrainRun(trigger=trigger, state="running", champion_version=champion)
                s.add(run)
                s.flush()
                run_id = run.id
            outcome = Outcome(state="running", run_id=run_id, champion=champion)
            stage = settings.home / STAGING / run_id
            timings: dict[str, float] = {}
            try:
                t = time.monotonic()
                progress(2, total, "gathering base data and confirmed cases")
                data = gather(settings, sessions, store, champion, stage, negative_control)
                timings["gather_s"] = round(time.monotonic() - t, 1)

                t = time.monotonic()
                progress(3, total, f"training a challenger on {data.counts['base_train']} base + "
                                   f"{data.counts['confirmed_train']} confirmed images")
                command = (f"melanoma-triage retrain (run {run_id}, {trigger}); trainer "
                           f"{settings.retrain_trainer}; options {shlex.quote(json.dumps(settings.retrain_train_args))}")
                meta = trainer(TrainRequest(
                    data=(data.train_root,), out=stage / "challenger", parent_version=champion,
                    champion_dir=store.version_dir(champion) if champion else None,
                    cache_dir=settings.home / STAGING / "cache", command=command,
                    options=dict(settings.retrain_train_args)))
                outcome.challenger = meta.version
                timings["train_s"] = round(time.monotonic() - t, 1)

                t = time.monotonic()
                progress(4, total, f"scoring champion and challenger on {len(data.eval_frame)} locked images")
                scores = score_both(store, champion, stage / "challenger", data.eval_frame,
                                    settings.home / STAGING / "cache", policy)
                timings["evaluate_s"] = round(time.monotonic() - t, 1)

                progress(5, total, "applying the gates")
                verdict = gates.decide(scores["champion"], scores["challenger"],
                                       scores["auc_difference"], policy)
                decision = _jsonable({
                    **verdict.as_dict(), "policy": gates.policy_dict(policy),
                    "champion": scores["champion"], "challenger": scores["challenger"],
                    "auc_difference": scores["auc_difference"], "data": data.counts,
                    "abandoned_runs_cleaned": abandoned,
                })
                (stage / "challenger" / "locked_evaluation.json").write_text(json.dumps(decision, indent=1))

                progress(6, total, "promoting the challenger" if verdict.promote else "keeping the champion")
                state = "kept"
                if verdict.promote:
                    if not lease.still_held():
                        decision["promote"] = False
                        decision["reasons"] = ["lost the retraining lock before promotion"]
                    else:
                        with pointer_lock(sessions):
                            store.add_version(stage / "challenger")
                            try:
                                admin.switch(store, sessions, admin.PROMOTE, meta.version, ACTOR,
                                             f"retrain run {run_id}: " + "; ".join(verdict.reasons),
                                             expect_current=champion, hold_lock=False)
                                state = "promoted"
                            except admin.AdminError as exc:
                                decision["promote"] = False
                                decision["reasons"] = [str(exc)]
                decision["timings"] = timings
                _finish(sessions, run_id, state=state, challenger_version=meta.version, decision=decision)
                outcome.state, outcome.decision = state, decision
                log.info("retrain %s: %s (%s)", run_id, state, "; ".join(decision["reasons"]))
                return outcome
            except BaseException as exc:  # SoftTimeLimitExceeded and KeyboardInterrupt too
                err = f"{type(exc).__name__}: {exc}"
                _finish(sessions, run_id, state="failed", error=err + "\n" + traceback.format_exc(limit=5),
                        decision={"timings": timings})
                outcome.state, outcome.error = "failed", err
                if not isinstance(exc, Exception):
                    raise
                log.error("retrain %s failed: %s", run_id, err)
                return outcome
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    finally:
        lease.release()
