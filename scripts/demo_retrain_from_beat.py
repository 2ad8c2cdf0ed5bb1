"""Demonstration of issue 4's "done when": a retrain cycle from beat to a recorded decision.

Runs ``melanoma-triage run`` (watcher, triage worker, retrain worker, beat) in a scratch home
with the retraining schedule set to every minute, tiny generated training data, and a
random tiny champion; waits for beat's retraining to finish, stops the service, and prints
the recorded decision and the model history.

    PYTHONPATH=. .venv/bin/python scripts/demo_retrain_from_beat.py [--trainer tiny|product]

``tiny`` trains the small CNN of tests/retraingen.py (seconds); ``product`` trains the
product's default recipe at 32 px without pretrained weights (a minute or two here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.modelgen import write_tiny_version  # noqa: E402
from tests.retraingen import write_tiny_dataset  # noqa: E402
from worker.db.models import ModelEvent, RetrainRun  # noqa: E402
from worker.classify.export import ensure_export  # noqa: E402
from worker.store.versions import ModelStore  # noqa: E402

TRAINERS = {
    "tiny": ("tests.retraingen:tiny_trainer", {}),
    "product": ("worker.retrain.training:train_product",
                  {"input_size": 32, "weights": None, "head_epochs": 1, "epochs": 2, "n_boot": 200}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=sorted(TRAINERS), default="tiny")
    args = parser.parse_args()
    trainer, train_args = TRAINERS[args.trainer]
    scratch = Path(tempfile.mkdtemp(prefix="retrain-demo-"))
    home, data = scratch / "home", write_tiny_dataset(scratch / "data", per_class=25)
    store = ModelStore(home / "model_store", export=ensure_export)
    store.set_current(store.add_version(write_tiny_version(scratch / "champion", version="tiny-champion")))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRIAGE_RETRAIN_CRON="* * * * *",
               TRIAGE_TRAINING_DATA_DIRS=json.dumps([str(data)]), TRIAGE_RETRAIN_TRAINER=trainer,
               TRIAGE_RETRAIN_TRAIN_ARGS=json.dumps(train_args), TRIAGE_RETRAIN_EVAL_FRACTION="0.3",
               TRIAGE_RETRAIN_MIN_POSITIVES="3", TRIAGE_RETRAIN_MAX_ECE="0.5")
    started = time.monotonic()
    with open(scratch / "run.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--home", str(home)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=scratch)
    engine = create_engine(f"sqlite:///{home / 'triage.db'}")
    try:
        while True:
            time.sleep(2)
            try:
                with engine.connect() as conn:
                    run = conn.execute(select(RetrainRun).where(RetrainRun.state != "running")).first()
            except Exception:
                continue  # the database is being created
            if run is not None:
                break
            if time.monotonic() - started > 900:
                raise SystemExit("no retraining finished in 15 minutes; see " + str(scratch / "run.log"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    with engine.connect() as conn:
        events = conn.execute(select(ModelEvent.action, ModelEvent.version, ModelEvent.previous_version,
                                     ModelEvent.actor, ModelEvent.reason)
                              .order_by(ModelEvent.created_at)).all()
    beat_lines = [line for line in (scratch / "run.log").read_text().splitlines()
                  if "retrain" in line and ("Sending due task" in line or "succeeded" in line)]
    print(f"service started -> decision recorded: {time.monotonic() - started:.0f} s (scratch: {scratch})")
    print("\n".join(beat_lines[:3]))
    print(json.dumps({"trigger": run.trigger, "state": run.state, "champion": run.champion_version,
                      "challenger": run.challenger_version,
                      "started_at": run.started_at.isoformat(), "finished_at": run.finished_at.isoformat(),
                      "decision": run.decision}, indent=2, default=str))
    for event in events:
        print("model event:", dict(event._mapping))


if __name__ == "__main__":
    main()
