"""One retraining run, end to end; called by the Celery task and by ``retrain --now``.

    lease (DB lease "retrain")  ->  RetrainRun row (running)
    -> gather: base data (training_data_dirs: manifest + data checks) and confirmed cases
       (archive + ground truth), roles from the locked set (worker.retrain.locked_set)
    -> train a challenger on the train-role rows, handed over as a resolved manifest, into
       <home>/retrain/<run id>/challenger (never into the store)
    -> score champion and challenger on the same locked evaluation set
    -> gates (worker.retrain.gates) -> promote (add_version + CURRENT + ModelEvent) or keep;
       with ``promotion_requires_approval``, a passing challenger is stored but not made
       current: ``pending_approval`` until a person runs ``models approve`` (worker.store.admin)
    -> RetrainRun row: promoted | pending_approval | kept | failed, with the decision and its reasons

The data are scanned and checked once, here; the trainer takes the rows as they are.
Confirmed cases are decoded once from the archive into PNG files under
<home>/retrain/<run id>/confirmed, since the image cache reads files (an archived image may
be DICOM).

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from schemas import CLASS_NAMES, MELANOMA, MELANOMA_INDEX, ModelAction, ModelMetadata, RetrainState
from worker.db.engine import make_engine, make_session_factory
from worker.storage import model_sync
from worker.db.lease import DbLease, current_holder
from worker.db.models import RetrainRun, utcnow
from worker.retrain import gates, truth
from worker.retrain.locked_set import EVAL, TRAIN, LockedSet
from worker.retrain.training import Trainer, TrainRequest, load_trainer
from worker.settings import Settings
from worker.store import admin
from worker.classify.export import ensure_export
from worker.store.versions import METADATA_FILE, MODEL_FILE, ModelStore

log = logging.getLogger(__name__)

#: The database lease that lets one retraining run at a time, across machines.
RETRAIN_LOCK = "retrain"
STAGING = "retrain"
ACTOR = "retrain"
#: ``source`` of confirmed cases in the manifest handed to the trainer.
CONFIRMED_SOURCE = "confirmed"
STEPS = ("lock", "gather data", "train challenger", "evaluate", "decide", "record")
Progress = Callable[[int, int, str], None]


@dataclass
class Outcome:
    state: RetrainState
    run_id: str | None = None
    champion: str | None = None
    challenger: str | None = None
    decision: dict = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"state": RetrainState(self.state).value, "run_id": self.run_id,
                "champion": self.champion, "challenger": self.challenger,
                "decision": self.decision, "error": self.error}


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
    train_rows: pd.DataFrame  # manifest columns: what the challenger trains on
    eval_frame: pd.DataFrame  # path, sha256, label, melanoma, origin: the locked set
    counts: dict


def _scan_base(settings: Settings) -> pd.DataFrame:
    """The base data of ``training_data_dirs``, scanned and resolved by the data checks."""
    from worker.training import datachecks, manifest

    if not settings.training_data_dirs:
        raise ValueError("no base training data: set TRIAGE_TRAINING_DATA_DIRS")
    scan = manifest.scan([Path(p) for p in settings.training_data_dirs])
    return datachecks.run_checks(scan).resolved.reset_index(drop=True)


def _confirmed_rows(cases: list[truth.ConfirmedCase], folder: Path, bind=None) -> pd.DataFrame:
    """Manifest rows of the confirmed cases, each archived image decoded once into a PNG.

    ``sha256`` is the archived file's (the key of the locked set); a case whose archived
    file is gone or unreadable is left out (the caller counts it)."""
    from PIL import Image as PILImage

    from worker.imaging.decode import decode_bytes
    from worker.intake import archive
    from worker.training.manifest import MANIFEST_COLUMNS

    rows = []
    for case in cases:
        try:
            rgb = decode_bytes(archive.load(case.archive_path, bind)).rgb
        except Exception as exc:  # archive gone or unreadable: skip, counted by the caller
            log.warning("confirmed image %s skipped: %s", case.image_id, type(exc).__name__)
            continue
        name = f"confirmed-{case.sha256[:20]}"
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(rgb).save(path)
        rows.append({"path": str(path), "source": CONFIRMED_SOURCE, "image_id": name,
                     "lesion_id": name, "label": case.diagnosis,
                     "melanoma": int(case.diagnosis == MELANOMA), "sha256": case.sha256,
                     "width": int(rgb.shape[1]), "height": int(rgb.shape[0])})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _negative_control(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Shuffle (label, melanoma) across the training rows: a challenger that must be refused
    (``retrain --negative-control``, a drill that shows the gate works on this deployment)."""
    rows = rows.copy()
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows["label"] = rows["label"].to_numpy()[perm]
    rows["melanoma"] = rows["melanoma"].to_numpy()[perm]
    return rows


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate, skipping empty frames (pandas warns about their dtypes otherwise)."""
    kept = [f for f in frames if len(f)] or frames[:1]
    out = pd.concat(kept, ignore_index=True)
    out["melanoma"] = out["melanoma"].astype(int)
    out["label"] = out["label"].astype(object).where(out["label"].notna(), None)
    return out


def _champion_split(store: ModelStore, champion: str | None) -> pd.DataFrame | None:
    if champion is None or not (store.version_dir(champion) / "split.csv").is_file():
        return None
    return pd.read_csv(store.version_dir(champion) / "split.csv", dtype=str)


def gather(settings: Settings, sessions: sessionmaker[Session], store: ModelStore,
           champion: str | None, stage: Path, negative_control: bool = False) -> Gathered:
    """Base data and confirmed cases, each with its locked-set role (recorded for good):
    the train-role rows for the trainer and the eval-role rows for scoring."""
    base = _scan_base(settings)
    with sessions() as s:
        cases = truth.confirmed_cases(s)
    locked = LockedSet(store.root, settings.retrain_eval_fraction)
    base["role"] = locked.assign_base(base, _champion_split(store, champion))
    role_of = dict(zip([c.sha256 for c in cases], locked.assign_confirmed([c.sha256 for c in cases])))
    locked.save()

    confirmed = _confirmed_rows(cases, stage / "confirmed", sessions.kw.get("bind"))
    confirmed["role"] = confirmed["sha256"].map(role_of)
    base_train, base_eval = base[base["role"] == TRAIN], base[base["role"] == EVAL]
    conf_train, conf_eval = confirmed[confirmed["role"] == TRAIN], confirmed[confirmed["role"] == EVAL]
    if negative_control:  # the drill: shuffled base labels only, no (correct) confirmed cases
        base_train = _negative_control(base_train, seed=settings.retrain_train_args.get("seed", 42))
        conf_train = conf_train.iloc[:0]

    train_rows = _stack([base_train, conf_train]).drop(columns="role")
    eval_frame = _stack([base_eval.assign(origin="base"), conf_eval.assign(origin="confirmed")])
    eval_frame = eval_frame[["path", "sha256", "label", "melanoma", "origin"]]
    counts = {"base_images": int(len(base)), "base_train": int(len(base_train)),
              "base_eval": int(len(base_eval)), "confirmed": len(cases),
              "confirmed_decoded": int(len(confirmed)), "confirmed_train": int(len(conf_train)),
              "confirmed_eval": int(len(conf_eval)), "eval_total": int(len(eval_frame)),
              "negative_control": negative_control}
    return Gathered(train_rows, eval_frame, counts)


# --------------------------------------------------------------------------- scoring

def locked_probabilities(version_dir: Path, frame: pd.DataFrame, cache_dir: Path) -> np.ndarray:
    """Calibrated probabilities of one version folder on the locked set, in batches."""
    import keras

    from worker.classify.inference import predict_probabilities
    from worker.training import dataset

    meta = ModelMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())
    model = keras.saving.load_model(version_dir / MODEL_FILE, compile=False)
    images = dataset.build_cache(frame, meta.input_size, cache_dir, progress=False)
    return predict_probabilities(model, images, meta.temperature)


def score_both(store: ModelStore, champion: str | None, challenger_dir: Path, frame: pd.DataFrame,
               cache_dir: Path, policy: gates.GatePolicy) -> dict:
    """Champion and challenger scored on the same rows, and their paired AUC difference."""
    labels = np.array([CLASS_NAMES.index(lb) if isinstance(lb, str) else -1 for lb in frame["label"]])
    y = frame["melanoma"].to_numpy().astype(int)
    chall_meta = ModelMetadata.model_validate_json((challenger_dir / METADATA_FILE).read_text())
    p_chall = locked_probabilities(challenger_dir, frame, cache_dir)
    chall = gates.score(chall_meta.version, p_chall, y, labels,
                        chall_meta.thresholds.urgent_melanoma, MELANOMA_INDEX)
    champ = diff = None
    if champion is not None:
        p_champ = locked_probabilities(store.version_dir(champion), frame, cache_dir)
        champ = gates.score(champion, p_champ, y, labels,
                            store.metadata(champion).thresholds.urgent_melanoma, MELANOMA_INDEX)
        diff = gates.paired_auc_difference(y, p_champ[:, MELANOMA_INDEX], p_chall[:, MELANOMA_INDEX],
                                           policy.n_boot, policy.confidence, policy.seed)
    return {"champion": champ, "challenger": chall, "auc_difference": diff}


# --------------------------------------------------------------------------- the run

@dataclass
class _Run:
    """What the steps of one recorded run share."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ModelStore
    lease: DbLease
    trigger: str
    run_id: str
    champion: str | None
    challenger: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stage(self) -> Path:
        return self.settings.home / STAGING / self.run_id

    @property
    def challenger_dir(self) -> Path:
        return self.stage / "challenger"

    @property
    def cache_dir(self) -> Path:
        return self.settings.home / STAGING / "cache"

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Record the seconds a step took (only when it finished)."""
        t = time.monotonic()
        yield
        self.timings[key] = round(time.monotonic() - t, 1)


def _abandon_stale_runs(sessions: sessionmaker[Session], home: Path) -> int:
    """Rows left 'running' by a run that died (we hold the lease: nobody else runs)."""
    with sessions.begin() as s:
        stale = s.scalars(select(RetrainRun.id)
                          .where(RetrainRun.state == RetrainState.RUNNING.value)).all()
        if stale:
            s.execute(update(RetrainRun).where(RetrainRun.id.in_(stale))
                      .values(state=RetrainState.FAILED.value, finished_at=utcnow(),
                              error="abandoned: the process running it stopped before finishing"))
    for run_id in stale:
        shutil.rmtree(home / STAGING / run_id, ignore_errors=True)
    return len(stale)


def _start(settings: Settings, sessions: sessionmaker[Session], lease: DbLease, trigger: str) -> _Run:
    """The RetrainRun row of this run (state running), against the current champion."""
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    champion = store.current_version()
    with sessions.begin() as s:
        row = RetrainRun(trigger=trigger, state=RetrainState.RUNNING.value, champion_version=champion)
        s.add(row)
        s.flush()
        run_id = row.id
    return _Run(settings, sessions, store, lease, trigger, run_id, champion)


def _finish(sessions: sessionmaker[Session], run_id: str, state: RetrainState, **values) -> None:
    with sessions.begin() as s:
        s.execute(update(RetrainRun).where(RetrainRun.id == run_id)
                  .values(finished_at=utcnow(), state=state.value, **values))


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
        model_sync.sync_home(settings, sessions.kw["bind"])  # database storage: the shared store
        outcome = _run(settings, sessions, trigger, trainer or load_trainer(settings.retrain_trainer),
                       policy or policy_from(settings), progress, negative_control)
        if settings.storage == "database":
            model_sync.publish(settings.model_store_dir, sessions.kw["bind"])
        return outcome
    finally:
        if engine is not None:
            engine.dispose()


def _run(settings: Settings, sessions: sessionmaker[Session], trigger: str, trainer: Trainer,
         policy: gates.GatePolicy, progress: Progress, negative_control: bool) -> Outcome:
    """Under the retraining lease: one recorded run; its staging folder goes at the end."""
    progress(1, len(STEPS), "taking the retraining lock")
    lease = DbLease(sessions, RETRAIN_LOCK, ttl_s=settings.retrain_lock_ttl_s)
    if not lease.acquire():
        holder = current_holder(sessions, RETRAIN_LOCK)
        log.info("retraining already running (%s): nothing to do", holder)
        return Outcome(state=RetrainState.BUSY, error=f"another retraining holds the lock: {holder}")
    try:
        with lease.keep_alive():
            abandoned = _abandon_stale_runs(sessions, settings.home)
            run = _start(settings, sessions, lease, trigger)
            try:
                return _cycle(run, trainer, policy, progress, negative_control, abandoned)
            except BaseException as exc:  # SoftTimeLimitExceeded and KeyboardInterrupt too
                outcome = _record_failure(run, exc)
                if not isinstance(exc, Exception):
                    raise
                return outcome
            finally:
                shutil.rmtree(run.stage, ignore_errors=True)
    finally:
        lease.release()


def _cycle(run: _Run, trainer: Trainer, policy: gates.GatePolicy, progress: Progress,
           negative_control: bool, abandoned: int) -> Outcome:
    """Gather, train, score, decide, promote or keep, record."""
    total = len(STEPS)
    with run.timed("gather_s"):
        progress(2, total, "gathering base data and confirmed cases")
        data = gather(run.settings, run.sessions, run.store, run.champion, run.stage, negative_control)

    with run.timed("train_s"):
        progress(3, total, f"training a challenger on {data.counts['base_train']} base + "
                           f"{data.counts['confirmed_train']} confirmed images")
        meta = trainer(_train_request(run, data.train_rows))
        run.challenger = meta.version

    with run.timed("evaluate_s"):
        progress(4, total, f"scoring champion and challenger on {len(data.eval_frame)} locked images")
        scores = score_both(run.store, run.champion, run.challenger_dir, data.eval_frame,
                            run.cache_dir, policy)

    progress(5, total, "applying the gates")
    verdict = gates.decide(scores["champion"], scores["challenger"], scores["auc_difference"], policy)
    decision = _jsonable({
        **verdict.as_dict(), "policy": gates.policy_dict(policy),
        "champion": scores["champion"], "challenger": scores["challenger"],
        "auc_difference": scores["auc_difference"], "data": data.counts,
        "abandoned_runs_cleaned": abandoned,
    })
    (run.challenger_dir / "locked_evaluation.json").write_text(json.dumps(decision, indent=1))

    hold = verdict.promote and run.settings.promotion_requires_approval
    progress(6, total, "storing the challenger for approval" if hold else
             "promoting the challenger" if verdict.promote else "keeping the champion")
    if hold:
        state = _hold_for_approval(run, decision)
    else:
        state = _promote(run, verdict, decision) if verdict.promote else RetrainState.KEPT
    decision["timings"] = run.timings
    _finish(run.sessions, run.run_id, state, challenger_version=meta.version, decision=decision)
    log.info("retrain %s: %s (%s)", run.run_id, state.value, "; ".join(decision["reasons"]))
    return Outcome(state=state, run_id=run.run_id, champion=run.champion,
                   challenger=meta.version, decision=decision)


def _train_request(run: _Run, rows: pd.DataFrame) -> TrainRequest:
    """The champion's recipe (model.json ``recipe``: backbone, colour constancy, ...) with
    ``retrain_train_args`` over it: a challenger is the champion's recipe on more data."""
    settings = run.settings
    inherited = {}
    if run.champion:
        inherited = {k: v for k, v in (run.store.metadata(run.champion).recipe or {}).items()
                     if k not in ("limit",)}
    options = {**inherited, **settings.retrain_train_args}
    command = (f"melanoma-triage retrain (run {run.run_id}, {run.trigger}); trainer "
               f"{settings.retrain_trainer}; options {shlex.quote(json.dumps(options, sort_keys=True))}")
    return TrainRequest(
        manifest=rows, out=run.challenger_dir, parent_version=run.champion,
        champion_dir=run.store.version_dir(run.champion) if run.champion else None,
        cache_dir=run.cache_dir, command=command, options=options)


def _promote(run: _Run, verdict: gates.GateDecision, decision: dict) -> RetrainState:
    """Store the challenger and make it current. ``kept``, with the reason put in
    ``decision``, when the lease was lost or the champion was replaced meanwhile."""
    if not run.lease.still_held():
        decision["promote"] = False
        decision["reasons"] = ["lost the retraining lock before promotion"]
        return RetrainState.KEPT
    with admin.pointer_lock(run.sessions):
        version = run.store.add_version(run.challenger_dir)
        try:
            admin.switch(run.store, run.sessions, ModelAction.PROMOTE, version, ACTOR,
                         f"retrain run {run.run_id}: " + "; ".join(verdict.reasons),
                         expect_current=run.champion, hold_lock=False)
        except admin.AdminError as exc:
            decision["promote"] = False
            decision["reasons"] = [str(exc)]
            return RetrainState.KEPT
    return RetrainState.PROMOTED


def _hold_for_approval(run: _Run, decision: dict) -> RetrainState:
    """Store the challenger (not current) to wait for ``models approve``; ``kept`` when the
    lease was lost meanwhile."""
    if not run.lease.still_held():
        decision["promote"] = False
        decision["reasons"] = ["lost the retraining lock before storing the challenger"]
        return RetrainState.KEPT
    version = run.store.add_version(run.challenger_dir)
    decision["awaiting_approval"] = (f"passed the gates; waits for `melanoma-triage models approve {version} "
                                     "--by NAME --reason TEXT` (settings.promotion_requires_approval)")
    return RetrainState.PENDING_APPROVAL


def _record_failure(run: _Run, exc: BaseException) -> Outcome:
    """Mark the run failed with a short traceback (called while ``exc`` is being handled)."""
    err = f"{type(exc).__name__}: {exc}"
    _finish(run.sessions, run.run_id, RetrainState.FAILED,
            error=err + "\n" + traceback.format_exc(limit=5), decision={"timings": run.timings})
    if isinstance(exc, Exception):
        log.error("retrain %s failed: %s", run.run_id, err)
    return Outcome(state=RetrainState.FAILED, run_id=run.run_id, champion=run.champion,
                   challenger=run.challenger, error=err)
