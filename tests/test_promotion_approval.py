"""Promotion by a person: with ``promotion_requires_approval`` a retrained challenger that passes
the gates is stored but waits as ``pending_approval`` until ``models approve``; the default
stays automatic. The challenger here is a tiny random network and the gate policy lets
anything through: what is tested is the bookkeeping, not the gate (tests/test_retrain.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from schemas import ModelMetadata
from tests.modelgen import write_tiny_version
from tests.test_retrain import retrain_env  # noqa: F401  (the fixture)
from worker.cli.main import app as cli_app
from worker.db.models import ModelEvent, RetrainRun
from worker.retrain import gates
from worker.retrain.cycle import run_retrain
from worker.store import admin

#: Passes every challenger (the bookkeeping under test starts after the gate).
ANYTHING = gates.GatePolicy(auc_margin=1.0, min_sensitivity=0.0, max_ece=1.0, min_positives=1,
                            min_negatives=1, n_boot=50)


def _random_trainer(seed: int):
    def trainer(req) -> ModelMetadata:
        write_tiny_version(req.out, version=f"chall-{seed}", seed=seed)
        return ModelMetadata.model_validate_json((req.out / "model.json").read_text())

    return trainer


def _runs(sessions) -> list[RetrainRun]:
    with sessions() as s:
        return s.scalars(select(RetrainRun).order_by(RetrainRun.started_at)).all()


def test_default_stays_automatic(retrain_env):  # noqa: F811
    settings, store, sessions = retrain_env(per_class=15)
    assert settings.promotion_requires_approval is False
    outcome = run_retrain(settings, trainer=_random_trainer(1), policy=ANYTHING, sessions=sessions)
    assert outcome.state == "promoted", outcome.decision.get("reasons")
    assert store.current_version() == "chall-1"


def test_challenger_waits_for_a_person_then_is_approved(retrain_env):  # noqa: F811
    settings, store, sessions = retrain_env(per_class=15, promotion_requires_approval=True)
    outcome = run_retrain(settings, trainer=_random_trainer(1), policy=ANYTHING, sessions=sessions)
    assert outcome.state == "pending_approval", outcome.error
    assert store.current_version() == "tiny-1" and "chall-1" in store.list_versions()
    assert "models approve chall-1" in outcome.decision["awaiting_approval"]
    assert [r.state for r in _runs(sessions)] == ["pending_approval"]
    with sessions() as s:
        assert s.scalars(select(ModelEvent)).all() == []
        assert [p["version"] for p in admin.pending_approvals(s)] == ["chall-1"]

    home = ["--home", str(settings.home)]
    runner = CliRunner()
    out = runner.invoke(cli_app, ["models", "pending", *home])
    assert out.exit_code == 0 and "chall-1" in out.output and "tiny-1" in out.output
    out = runner.invoke(cli_app, ["models", "approve", "tiny-1", "--reason", "x", "--by", "dr.a", *home])
    assert out.exit_code != 0 and "not waiting for approval" in out.output
    with pytest.raises(admin.AdminError, match="reason"):
        admin.approve(store, sessions, "chall-1", "dr.a", "  ")
    out = runner.invoke(cli_app, ["models", "approve", "chall-1", "--by", "dr.a",
                                  "--reason", "reviewed the locked-set numbers", *home])
    assert out.exit_code == 0, out.output
    assert store.current_version() == "chall-1"
    (run,) = _runs(sessions)
    assert run.state == "promoted" and run.decision["approved_by"] == "dr.a"
    assert run.decision["approval_reason"] == "reviewed the locked-set numbers"
    with sessions() as s:  # (the CLI's home preparation recorded the seed first)
        events = s.scalars(select(ModelEvent).where(ModelEvent.action != "seed")).all()
    assert [(e.action, e.version, e.previous_version, e.actor) for e in events] == [
        ("approve", "chall-1", "tiny-1", "dr.a")]
    # an approval is undone like a promotion
    admin.rollback(store, sessions, "dr.b", "too many urgent referrals")
    assert store.current_version() == "tiny-1"


def test_approval_refused_once_the_champion_changed(retrain_env, tiny_model_dir):  # noqa: F811
    settings, store, sessions = retrain_env(per_class=15, promotion_requires_approval=True)
    first = run_retrain(settings, trainer=_random_trainer(1), policy=ANYTHING, sessions=sessions)
    second = run_retrain(settings, trainer=_random_trainer(2), policy=ANYTHING, sessions=sessions)
    assert first.state == second.state == "pending_approval"
    admin.approve(store, sessions, "chall-2", "dr.a", "the newer one")
    # the older challenger was gated against tiny-1; it is kept, not promotable any more
    assert [r.state for r in _runs(sessions)] == ["kept", "promoted"]
    assert _runs(sessions)[0].decision["superseded_by"] == "chall-2"
    with pytest.raises(admin.AdminError, match="not waiting"):
        admin.approve(store, sessions, "chall-1", "dr.a", "too late")
    assert store.current_version() == "chall-2"


def test_approval_refused_when_the_current_version_moved(retrain_env):  # noqa: F811
    settings, store, sessions = retrain_env(per_class=15, promotion_requires_approval=True)
    run_retrain(settings, trainer=_random_trainer(1), policy=ANYTHING, sessions=sessions)
    write_tiny_version(settings.home / "other", version="other", seed=5)
    store.add_version(settings.home / "other")
    admin.promote(store, sessions, "other", "dr.b", "by hand meanwhile")
    with pytest.raises(admin.AdminError, match="current now"):
        admin.approve(store, sessions, "chall-1", "dr.a", "late")
    assert store.current_version() == "other"
    assert [r.state for r in _runs(sessions)] == ["pending_approval"]
