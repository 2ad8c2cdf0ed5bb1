"""Leave-one-source-out evaluation and the threshold policy built on it: fold rows, the
worst-source rules by hand, the derived version with LOSO thresholds and its model card, and
(slow) ``train --loso`` end to end on tiny generated data, resumable per fold."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from schemas import ModelMetadata
from worker.classify.export import ensure_export
from worker.store.versions import ModelStore
from worker.training.loso import (
    fold_rows,
    logit,
    loso_markdown,
    needed_threshold,
    sigmoid,
    worst_source_rules,
)
from worker.training.loso_policy import LosoPolicyError, apply_loso, loso_threshold


def _frame(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"path": f"/x/{i}.jpg", "source": src, "image_id": iid, "lesion_id": lid, "label": "nevus",
                          "melanoma": 0, "sha256": sha, "width": 10, "height": 10}
                         for i, (src, iid, lid, sha) in enumerate(rows)])


def test_fold_rows_leave_out_what_the_held_out_source_shares():
    df = _frame([
        ("ham10000", "ISIC_1", "HAM_A", "s1"),
        ("isic2017", "ISIC_2", "HAM_A", "s2"),   # same lesion as a HAM10000 image
        ("isic-9class", "ISIC_3", "ISIC_3", "s3"),
        ("isic-9class", "ISIC_4", "ISIC_4", "s4"),
        ("ham10000", "ISIC_5", "HAM_B", "s4"),   # same content as an isic-9class file
    ])
    train, held, dropped = fold_rows(df, "isic2017")
    assert list(held["image_id"]) == ["ISIC_2"] and dropped == 1
    assert "ISIC_1" not in set(train["image_id"]) and len(train) == 3
    train, held, dropped = fold_rows(df, "isic-9class")
    assert set(held["image_id"]) == {"ISIC_3", "ISIC_4"} and dropped == 1
    assert list(train["image_id"]) == ["ISIC_1", "ISIC_2"]


def _scores():
    """Source a: 19 of 20 melanomas at 0.5 (its validation threshold 0.1 has room); source b:
    19 of 20 at 0.05 (below its validation threshold 0.2: it needs a lower one)."""
    ya = np.r_[np.ones(20), np.zeros(20)].astype(int)
    pa = np.r_[[0.5] * 19, [0.01], [0.001] * 10, [0.3] * 10]
    yb = np.r_[np.ones(20), np.zeros(40)].astype(int)
    pb = np.r_[[0.9], [0.05] * 19, [0.01] * 30, [0.1] * 10]
    return {"a": (ya, pa), "b": (yb, pb)}


def _ci(v):
    return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05}


def _loso() -> dict:
    folds = {s: {"n": 40 + 20 * (s == "b"), "n_melanoma": 20, "threshold": t, "melanoma_auc": _ci(0.8),
                 "sensitivity": _ci(0.9), "specificity": _ci(0.4)} for s, t in (("a", 0.1), ("b", 0.2))}
    return {"created_at": "2026-01-01T00:00:00+00:00", "command": "melanoma-triage train --loso ...",
            "recipe": {"input_size": 32, "backbone": "lite0"}, "required_sensitivity": 0.95,
            "folds": folds, "rules": worst_source_rules(folds, _scores())}


def test_worst_source_rules_by_hand():
    scores = _scores()
    assert needed_threshold(*scores["a"]) == 0.5 and needed_threshold(*scores["b"]) == 0.05
    assert needed_threshold(np.zeros(3, int), np.ones(3)) is None
    rules = _loso()["rules"]
    move_b = logit(0.05) - logit(0.2)
    assert rules["shift"] == {"logit_shift": pytest.approx(move_b), "worst_source": "b"}
    assert rules["absolute"] == {"threshold": 0.05, "worst_source": "b"}
    a, b = rules["per_source"]["a"], rules["per_source"]["b"]
    assert a["logit_move"] == pytest.approx(logit(0.5) - logit(0.1))
    # each fold's threshold moved by b's shift: sensitivity >= 0.95 on both sources
    assert a["shift"]["threshold"] == pytest.approx(sigmoid(logit(0.1) + move_b))
    assert a["shift"]["sensitivity"] == 0.95 and b["shift"]["sensitivity"] == 1.0  # b: ties at 0.05
    assert a["shift"]["specificity"] == 0.5 and b["shift"]["specificity"] == 0.75
    assert a["absolute"]["specificity"] == 0.5 and a["absolute"]["sensitivity"] == 0.95
    # fitted without b (a had room: no move), the rule misses b's melanomas: the honest estimate
    assert b["shift_without_this_source"]["logit_shift"] == 0.0
    assert b["shift_without_this_source"]["sensitivity"] == 0.05
    assert rules["expected_at_new_site"] == {"specificity": 0.5, "worst_source": "a",
                                             "specificity_range": [0.5, 0.75]}
    table = loso_markdown(_loso())
    assert "| a | 40 | 20 (few) | 0.800 (0.750-0.850) | 0.1000 |" in table
    assert "expected specificity at a new site: 0.50 (worst held-out source, a; 0.50-0.75" in table


def test_a_fold_trained_on_a_small_share_is_shown_but_sets_no_rule():
    loso = _loso()
    folds = {s: dict(f) for s, f in loso["folds"].items()}
    # b's model saw only 20 % of the images (as holding out HAM10000 leaves a third): out of the rules
    folds["a"] |= {"n_train_rows": 160, "n_left_out_shared": 0}
    folds["b"] |= {"n_train_rows": 15, "n_left_out_shared": 0}
    rules = worst_source_rules(folds, _scores())
    a, b = rules["per_source"]["a"], rules["per_source"]["b"]
    assert a["in_rule"] and not b["in_rule"] and b["training_share"] == pytest.approx(0.2)
    assert rules["shift"] == {"logit_shift": 0.0, "worst_source": "a"}  # a had room: no move
    assert b["shift"]["sensitivity"] == 0.05  # ... which b, shown, does not keep
    assert rules["shift_all_folds"]["worst_source"] == "b"
    assert rules["shift_all_folds"]["logit_shift"] == pytest.approx(logit(0.05) - logit(0.2))
    assert rules["expected_at_new_site"]["worst_source"] == "a"
    table = loso_markdown(loso | {"folds": folds, "rules": rules})
    assert "| b \\* | 60 |" in table and "not in the rules: trained on less than 50% of the images (b 20%)" in table
    assert "across the 1 held-out sources in the rules" in table
    # older fold.json files without counts: every fold counts, as before
    assert all(d["in_rule"] for d in loso["rules"]["per_source"].values())


def test_when_every_source_has_room_the_threshold_rises_with_a_margin_and_within_validation():
    from worker.training.loso_policy import loso_threshold

    # both sources keep every melanoma at or above 0.4, far above their thresholds 0.1 and 0.2
    y = np.r_[np.ones(40), np.zeros(60)].astype(int)
    scores = {"a": (y, np.r_[np.linspace(0.4, 0.9, 40), np.linspace(0.0, 0.6, 60)]),
              "b": (y, np.r_[np.linspace(0.5, 0.9, 40), np.linspace(0.0, 0.7, 60)])}
    folds = {s: {"n": 100, "n_melanoma": 40, "threshold": t, "melanoma_auc": _ci(0.9), "sensitivity": _ci(1.0),
                 "specificity": _ci(0.3)} for s, t in (("a", 0.1), ("b", 0.2))}
    rules = worst_source_rules(folds, scores)
    up = {s: logit(needed_threshold(*scores[s], 0.97)) - logit(folds[s]["threshold"]) for s in folds}
    assert min(up.values()) > 0
    assert rules["shift"]["logit_shift"] == pytest.approx(min(up.values()))
    for s, d in rules["per_source"].items():
        assert d["shift"]["sensitivity"] >= 0.97  # the margin, on every held-out source
        assert d["shift"]["specificity"] > 0.3  # ... for specificity that the unmoved threshold lost
    loso = {"rules": rules, "folds": folds}
    never = loso_threshold(loso, 0.05)  # a version that does not record its ceiling: unchanged
    assert never["threshold"] == 0.05
    capped = loso_threshold(loso, 0.05, ceiling=0.08)  # its own validation allows up to 0.08 only
    assert capped["threshold"] == 0.08 and capped["capped"]
    free = loso_threshold(loso, 0.05, ceiling=0.9)
    assert free["threshold"] == pytest.approx(sigmoid(logit(0.05) + rules["shift"]["logit_shift"]))
    assert not free["capped"]


def test_absolute_rule_takes_the_probability_every_source_needed_within_validation():
    from worker.training.loso_policy import LosoPolicyError, loso_threshold

    loso = _loso()  # a needs 0.5, b needs 0.05: the absolute threshold is 0.05
    lower = loso_threshold(loso, 0.2, rule="absolute")  # below the version's own threshold: taken
    assert lower["threshold"] == 0.05 and lower["rule"] == "absolute" and not lower["capped"]
    assert lower["worst_heldout_sensitivity"] == 0.95 and lower["expected_specificity"] == 0.5
    assert "absolute-threshold rule" in lower["sentence"]
    assert loso_threshold(loso, 0.01, rule="absolute")["threshold"] == 0.01  # no ceiling: never up
    up = loso_threshold(loso, 0.01, ceiling=0.03, rule="absolute")
    assert up["threshold"] == 0.03 and up["capped"]
    with pytest.raises(LosoPolicyError, match="rule"):
        loso_threshold(loso, 0.01, rule="median")


def test_rules_without_melanomas_are_undefined():
    folds = {"a": {"threshold": 0.1}}
    rules = worst_source_rules(folds, {"a": (np.zeros(5, int), np.linspace(0, 1, 5))})
    assert rules["defined"] is False
    with pytest.raises(LosoPolicyError, match="no threshold rule"):
        loso_threshold({"rules": rules}, 0.02)


def test_policy_moves_the_threshold_down_never_up():
    loso = _loso()
    choice = loso_threshold(loso, 0.02)
    assert choice["threshold"] == pytest.approx(sigmoid(logit(0.02) + logit(0.05) - logit(0.2)))
    assert choice["worst_source"] == "b" and choice["expected_specificity"] == 0.5
    assert choice["worst_heldout_sensitivity"] == 0.95
    roomy = json.loads(json.dumps(loso))
    roomy["rules"]["shift"]["logit_shift"] = 0.7  # every source had room: keep the validation threshold
    assert loso_threshold(roomy, 0.02)["threshold"] == 0.02


def test_apply_loso_adds_a_version_with_the_same_weights(tmp_path, tiny_model_dir):
    store = ModelStore(tmp_path / "store", export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    loso = _loso()
    with pytest.raises(LosoPolicyError, match="input size 64"):
        apply_loso(store, "tiny-1", loso | {"recipe": {"input_size": 64}}, "test")
    version, choice = apply_loso(store, "tiny-1", loso, "test command")
    assert store.current_version() == "tiny-1" and version in store.list_versions()
    store.verify(version)
    base, meta = store.metadata("tiny-1"), store.metadata(version)
    assert meta.sha256 == base.sha256 and meta.temperature == base.temperature
    assert meta.parent_version == "tiny-1" and meta.training_command == "test command"
    assert meta.thresholds.urgent_melanoma == pytest.approx(sigmoid(logit(0.3) + logit(0.05) - logit(0.2)))
    assert meta.thresholds.soon_keratinocyte == base.thresholds.soon_keratinocyte
    assert meta.metrics["loso_threshold"]["base_threshold"] == 0.3 and "-loso-" in version
    folder = store.version_dir(version)
    assert json.loads((folder / "loso.json").read_text())["rules"] == json.loads(json.dumps(loso["rules"]))
    card = (folder / "model_card.md").read_text()
    assert "leave-one-source-out" in card and "expected specificity at a new site: 0.50" in card


def test_model_card_shows_the_loso_table():
    from datetime import UTC, datetime

    from schemas import TriageThresholds
    from worker.training.model_card import render_model_card

    report = {"final": {"images": 10, "per_class": {"nevus": 8}, "per_source": {"ham10000": 10}}}
    th = TriageThresholds(urgent_melanoma=0.01, soon_keratinocyte=0.3, min_confidence=0.4,
                          urgent_sensitivity=0.95, urgent_specificity=0.5)
    meta = ModelMetadata(version="v2", created_at=datetime.now(UTC), sha256="0" * 64, input_size=32,
                         temperature=1.0, thresholds=th, parent_version="v1",
                         metrics={"loso_threshold": {"threshold": 0.01, "base_threshold": 0.02,
                                                     "logit_shift": -0.7, "worst_source": "b"}})
    card = render_model_card(meta, report, {}, {"n": 10, "thresholds": {"urgent_melanoma": 0.02}}, _loso())
    assert "## A clinic the model has never seen: leave-one-source-out" in card
    assert "**expected specificity at a new site: 0.50 (worst held-out source, a;" in card
    assert "| b | 60 | 20 (few) |" in card
    assert "set by leave-one-source-out" in card and "measured at 0.0200" in card
    assert "leave-one-source-out" not in render_model_card(meta.model_copy(update={"metrics": {}}), report, {},
                                                           {"n": 10})


def test_models_apply_loso_command(tmp_path, migrated_settings, tiny_model_dir):
    from worker.cli.main import app as cli_app

    store = ModelStore(migrated_settings.model_store_dir, export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    (tmp_path / "loso.json").write_text(json.dumps(_loso()))
    out = CliRunner().invoke(cli_app, ["models", "apply-loso", "tiny-1", "--loso", str(tmp_path / "loso.json"),
                                       "--home", str(migrated_settings.home), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["added_version"] in store.list_versions() and doc["worst_source"] == "b"
    assert store.current_version() == "tiny-1"


# ----------------------------------------------------------------------------- end to end (slow)

def _app() -> typer.Typer:
    from worker.training.cli import register

    app = typer.Typer(pretty_exceptions_show_locals=False)
    register(app)
    return app


@pytest.mark.slow
def test_train_loso_end_to_end_and_resumable(tmp_path):
    from tests.test_datachecks import make_fixture_data

    data, out = tmp_path / "data", tmp_path / "loso"
    make_fixture_data(data, per_class=5)
    args = ["train", "--loso", "--data", str(data), "--out", str(out), "--weights", "none", "--input-size", "32",
            "--head-epochs", "1", "--epochs", "0", "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"),
            "--n-boot", "20", "--seed", "7", "--no-jit"]
    res = CliRunner().invoke(_app(), args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    loso = json.loads((out / "loso.json").read_text())
    assert set(loso["folds"]) == {"ham10000", "isic-9class", "isic2017"}
    for source, fold in loso["folds"].items():
        d = out / f"fold-{source}"
        assert (d / "fold.json").is_file() and (d / "model" / "model.keras").is_file()
        assert (d / "heldout" / "metrics.json").is_file()
        if fold["n_nine_class"]:
            assert (d / "heldout" / "evaluation.pdf").is_file()
        held = pd.read_csv(d / "heldout.csv")
        assert len(held) == fold["n"] and held["melanoma"].sum() == fold["n_melanoma"]
        split = pd.read_csv(d / "model" / "split.csv")
        assert source not in set(split["source"])  # never trained or validated on its held-out source
        assert not set(split["sha256"]) & set(held["sha256"])
        assert 0 <= fold["threshold"] <= 1 and "value" in fold["melanoma_auc"]
    assert loso["rules"]["defined"] and "expected specificity at a new site" in res.output
    assert (out / "loso.md").read_text().startswith("| held-out source |")

    # resumable per fold: a finished fold is skipped; a lost fold is redone
    (out / "fold-isic2017" / "fold.json").unlink()
    before = (out / "fold-ham10000" / "fold.json").read_text()
    res = CliRunner().invoke(_app(), args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.output.count("already done, skipped") == 2
    assert (out / "fold-ham10000" / "fold.json").read_text() == before
    assert (out / "fold-isic2017" / "fold.json").is_file()
    with pytest.raises(ValueError, match="another recipe"):
        CliRunner().invoke(_app(), [*args[:-2], "8", "--no-jit"], catch_exceptions=False)

    # a version with the LOSO threshold: its card and `evaluate` show the table
    store = ModelStore(tmp_path / "store", export=ensure_export)
    base = store.add_version(out / "fold-isic2017" / "model")
    version, _ = apply_loso(store, base, loso, "test")
    card = (store.version_dir(version) / "model_card.md").read_text()
    assert "## Performance on the held-out test split" in card and "leave-one-source-out" in card
    res = CliRunner().invoke(_app(), ["evaluate", "--model", version, "--data", str(data), "--store",
                                      str(store.root), "--out", str(tmp_path / "eval"), "--cache-dir",
                                      str(tmp_path / "cache"), "--n-boot", "20"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "leave-one-source-out" in res.output and "| ham10000 |" in res.output
    assert math.isfinite(loso["rules"]["shift"]["logit_shift"])


def _heldout_run(root, name: str, y, p, order_seed: int):
    fold = root / name / "fold-isic2017"
    fold.mkdir(parents=True)
    frame = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(len(y))],
                          "sha256": [f"{i:064x}" for i in range(len(y))], "melanoma": y, "p_melanoma": p})
    frame.sample(frac=1, random_state=order_seed).to_csv(fold / "heldout.csv", index=False)
    return root / name


def test_eval_ensemble_matches_rows_by_hash_and_averages_logits(tmp_path):
    """benchmarks/eval_ensemble.py: rows written in another order are matched by sha256, and
    the ensemble is the mean logit of the members, scored like one model."""
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.2).astype(int)
    members = [1 / (1 + np.exp(-(1.2 * y + rng.normal(size=300) - 2))) for _ in range(2)]
    runs = [_heldout_run(tmp_path, f"seed{k}", y, p, k) for k, p in enumerate(members)]
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_ensemble.py"
    out = subprocess.run([sys.executable, str(script), *map(str, runs), "--n-boot", "50"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| isic2017")}
    z = np.mean([np.log(p / (1 - p)) for p in members], axis=0)
    for name, p in [("seed0", members[0]), ("seed1", members[1]), ("ensemble of 2", 1 / (1 + np.exp(-z)))]:
        assert f"| {roc_auc_score(y, p):.3f} (" in rows[name]
    assert len(rows) == 3

    _heldout_run(tmp_path, "other", y[:-1], members[0][:-1], 0)
    bad = subprocess.run([sys.executable, str(script), str(runs[0]), str(tmp_path / "other")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "scored other images" in bad.stderr
