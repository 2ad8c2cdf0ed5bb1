"""The command line as a hospital integrator uses it: the same conventions on every command
(results on stdout, logs on stderr, ``--json``, enum choices, exit codes), read-only commands
that never change a home, and the import-time contract of the worker modules (TensorFlow
must never be imported before Celery forks)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from enum import Enum

import pytest
import typer
from typer.testing import CliRunner

from schemas import Laterality, LesionClass, TruthSource
from tests.imagegen import dicom_bytes, lesion_rgb
from worker.classify.export import ensure_export
from worker.cli.main import app
from worker.cli.output import ExitCode


def _command(*path: str):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _option(command, name: str):
    return next(p for p in command.params if p.name == name)


# ----------------------------------------------------------------------------- conventions

def test_version_and_help_list_the_exit_codes():
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("melanoma-triage ")
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "400"}).stdout
    for code in ExitCode:
        assert f"{code.value} " in help_text.split("Exit codes:")[1]


def test_every_typer_hides_local_variables_in_tracebacks():
    apps, seen = [app], []
    while apps:
        current = apps.pop()
        seen.append(current)
        assert current.pretty_exceptions_show_locals is False, current.info.name
        apps += [group.typer_instance for group in current.registered_groups]
    assert len(seen) >= 4  # melanoma-triage, db, data, models


@pytest.mark.parametrize(("path", "option", "choices"), [
    (("enqueue",), "laterality", [lat.value for lat in Laterality]),
    (("label",), "source", [s.value for s in TruthSource]),
    (("label-import",), "source", [s.value for s in TruthSource]),
    (("label",), "diagnosis", [c.value for c in LesionClass]),
    (("predict",), "fmt", ["jsonl", "table"]),
    (("train",), "backbone", ["mobilenet", "lite0", "lite1", "lite2"]),
    (("train",), "lr_schedule", ["cosine", "plateau"]),
    (("models", "apply-loso"), "rule", ["shift", "absolute"]),
])
def test_choices_are_enums_that_help_lists(path, option, choices):
    enum = _option(_command(*path), option).type_descriptor.annotation
    assert issubclass(enum, Enum) and sorted(m.value for m in enum) == sorted(choices)
    help_text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).stdout
    assert "|".join(choices[:2]).lower() in help_text.lower()  # case-insensitive ones show lower case


def test_every_command_that_prints_data_has_json():
    data_commands = [("status",), ("reconcile",), ("init",), ("enqueue",), ("db", "upgrade"),
                     ("train",), ("evaluate",), ("data", "check"), ("data", "describe"),
                     ("models", "list"), ("models", "show"), ("models", "history"),
                     ("models", "promote"), ("models", "rollback"), ("models", "shadow"),
                     ("label",), ("label-import",), ("metrics",), ("retrain",)]
    for path in data_commands:
        assert "--json" in _option(_command(*path), "as_json").opts, path
    assert "--format" in _option(_command("predict"), "fmt").opts


def test_training_options_default_to_trainconfig():
    from worker.training.config import TrainConfig

    train = _command("train")
    names = {p.name for p in train.params}
    checked = 0
    for field in dataclasses.fields(TrainConfig):
        if field.name in names and field.default is not dataclasses.MISSING:
            default = _option(train, field.name).default
            assert getattr(default, "value", default) == field.default, field.name
            checked += 1
    assert checked >= 18
    assert _option(train, "jit").default is True


def test_cli_needs_neither_tensorflow_nor_the_training_extras_to_start():
    code = ("import sys, worker.cli.main; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'pandas', 'scipy', 'sklearn', "
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_progress_and_library_prints_go_to_stderr(capsys):
    from worker.cli.output import progress, stdout_as_log

    with progress("working", total=2) as steps, stdout_as_log(steps):
        print("a line the trainer prints")
        steps.step("second step", completed=1)
        steps.advance()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "a line the trainer prints" in captured.err and "second step" in captured.err


# ----------------------------------------------------------------------------- read-only commands

def test_status_on_a_missing_home_is_one_line_and_creates_nothing(tmp_path):
    home = tmp_path / "not-yet"
    result = CliRunner().invoke(app, ["status", "--home", str(home)])
    assert result.exit_code == ExitCode.NOT_READY
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "does not exist" in result.stderr and not home.exists()


@pytest.mark.parametrize("args", [["status"], ["metrics"], ["models", "history"], ["reconcile"]])
def test_read_only_commands_do_not_create_a_database(tmp_path, args):
    home = tmp_path / "home"
    home.mkdir()
    result = CliRunner().invoke(app, [*args, "--home", str(home)])
    assert result.exit_code == ExitCode.NOT_READY, result.output
    assert "init" in result.stderr and not (home / "triage.db").exists()


def test_read_only_commands_never_migrate(migrated_settings, store_with_tiny_model, monkeypatch):
    import worker.db.migrate
    import worker.process.home

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a read-only command tried to prepare or migrate the home")

    monkeypatch.setattr(worker.process.home, "prepare", forbidden)
    monkeypatch.setattr(worker.db.migrate, "upgrade", forbidden)
    home = ["--home", str(migrated_settings.home)]
    runner = CliRunner()
    for args in (["status", "--json"], ["models", "list", "--json"], ["metrics", "--json"],
                 ["models", "history"], ["models", "show", "tiny-1", "--history"]):
        result = runner.invoke(app, [*args, *home])
        assert result.exit_code == 0, (args, result.output)
        json.loads(result.stdout)  # one JSON document, nothing else on stdout
    listed = json.loads(runner.invoke(app, ["models", "list", "--json", *home]).stdout)
    assert [row["version"] for row in listed] == ["tiny-1"]


def test_a_schema_behind_the_code_is_not_upgraded_by_status(settings):
    from worker.db.migrate import current_revision, upgrade

    upgrade(settings.database_url, "0001")
    result = CliRunner().invoke(app, ["status", "--home", str(settings.home)])
    assert result.exit_code == ExitCode.NOT_READY and "db upgrade" in result.stderr
    assert current_revision(settings.database_url) == "0001"


# ----------------------------------------------------------------------------- enqueue

def test_enqueue_command_records_metadata_that_wins_over_tags(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TRIAGE_HOME", str(home))
    image = tmp_path / "lesion.dcm"
    image.write_bytes(dicom_bytes(lesion_rgb(seed=31), metadata={"PatientID": "FROM-TAG"}))
    runner = CliRunner()
    bad = runner.invoke(app, ["enqueue", str(image), "--laterality", "Q", "--home", str(home)])
    assert bad.exit_code == ExitCode.USAGE and "laterality" in bad.output
    ok = runner.invoke(app, ["enqueue", str(image), "--patient-id", "CLI-1", "--accession", "A1",
                             "--laterality", "l", "--body-site", "left forearm", "--home", str(home),
                             "--json"])
    assert ok.exit_code == 0, ok.output
    first = json.loads(ok.stdout)
    assert first["state"] == "received" and not first["duplicate"]
    again = runner.invoke(app, ["enqueue", str(image), "--home", str(home)])
    assert again.exit_code == 0 and again.stdout.startswith(first["job_id"])
    assert "(duplicate)" in again.stdout

    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{home / 'triage.db'}")
    with engine.connect() as conn:
        caller = conn.execute(text("select caller_metadata from images")).scalar_one()
    engine.dispose()
    assert json.loads(caller) == {"patient_id": "CLI-1", "accession_number": "A1",
                                  "laterality": "L", "body_site": "left forearm"}


def test_enqueue_of_a_rejected_file_exits_1(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    result = CliRunner().invoke(app, ["enqueue", str(junk), "--home", str(tmp_path / "home"), "--json"])
    assert result.exit_code == ExitCode.FAILED, result.output
    assert json.loads(result.stdout)["state"] == "rejected"


# ----------------------------------------------------------------------------- import contracts

def test_worker_modules_do_not_import_tensorflow():
    code = ("import sys, worker.messaging.celery_worker, worker.messaging.tasks, worker.client, worker.cli.main, schemas; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schemas_import_without_celery_or_sqlalchemy():
    code = ("import sys, schemas; "
            "print(sorted(m for m in ('celery', 'sqlalchemy', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- predict / evaluate

def test_evaluate_without_a_model_is_not_ready_not_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path), "--store", str(tmp_path / "empty")])
    assert result.exit_code == ExitCode.NOT_READY and "no current version" in result.stderr


def test_predict_walks_folders_and_reports_rejections(tmp_path, tiny_model_dir):
    from tests.imagegen import jpeg_bytes
    from worker.store.versions import ModelStore

    store = ModelStore(tmp_path / "store", export=ensure_export)
    store.set_current(store.add_version(tiny_model_dir))
    images = tmp_path / "images"
    (images / "clinic").mkdir(parents=True)
    (images / "clinic" / "a.jpg").write_bytes(jpeg_bytes(lesion_rgb(seed=50)))
    (images / "b.dcm").write_bytes(dicom_bytes(lesion_rgb(seed=51)))
    (images / "notes.txt").write_text("not an image")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(images), "--store", str(store.root)])
    assert result.exit_code == ExitCode.FAILED, result.output  # one input was rejected
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # stdout: only results
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images.rglob("*") if p.is_file())
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["notes.txt"]["error"] == "not_an_image"
    for name in ("a.jpg", "b.dcm"):
        assert by_name[name]["model_version"] == "tiny-1" and by_name[name]["triage"]
        assert abs(sum(by_name[name]["probabilities"].values()) - 1) < 1e-6
    assert "predicting with tiny-1" in result.stderr

    clean = runner.invoke(app, ["predict", str(images / "clinic"), "--store", str(store.root),
                                "--format", "table"])
    assert clean.exit_code == 0 and "tiny-1" in clean.stdout
    empty = runner.invoke(app, ["predict", str(images), "--store", str(tmp_path / "no-store")])
    assert empty.exit_code == ExitCode.NOT_READY and empty.stdout == ""


# ----------------------------------------------------------------------------- retrain

@pytest.mark.parametrize(("state", "code"), [("kept", ExitCode.OK), ("failed", ExitCode.FAILED),
                                             ("busy", ExitCode.BUSY)])
def test_retrain_exit_codes_and_progress_on_stderr(tmp_path, monkeypatch, state, code):
    import worker.retrain.cycle as cycle
    from schemas import RetrainState

    def fake_run(settings, trigger, negative_control, progress):
        progress(1, 2, "taking the retraining lock")
        print("a trainer log line")
        return cycle.Outcome(state=RetrainState(state), champion="tiny-1")

    monkeypatch.setattr(cycle, "run_retrain", fake_run)
    runner = CliRunner()
    assert runner.invoke(app, ["retrain", "--home", str(tmp_path / "home")]).exit_code == ExitCode.USAGE
    result = runner.invoke(app, ["retrain", "--now", "--json", "--home", str(tmp_path / "home")])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["state"] == state
    assert "taking the retraining lock" in result.stderr and "a trainer log line" in result.stderr
