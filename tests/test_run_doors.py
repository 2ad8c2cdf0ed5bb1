"""``melanoma-triage run`` starts the network doors as supervised children, by default."""

from __future__ import annotations

import sys

from tests.conftest import make_settings
from worker.process.service import celery_commands, child_env, door_banner, door_commands, supervisor_for


def test_doors_are_children_of_run_by_default(settings):
    doors = door_commands(settings)
    assert doors == {"dicom": [sys.executable, "-m", "worker", "receive-dicom"],
                     "http": [sys.executable, "-m", "worker", "serve"]}
    names = [child.name for child in supervisor_for(settings).children]
    assert set(names) == set(celery_commands(settings)) | {"dicom", "http"}
    assert "deliver-worker" in names  # results wait through retries in their own worker


def test_each_door_can_be_turned_off(tmp_path):
    assert door_commands(make_settings(tmp_path, dicom_enabled=False)).keys() == {"http"}
    assert door_commands(make_settings(tmp_path, http_enabled=False)).keys() == {"dicom"}
    off = make_settings(tmp_path, dicom_enabled=False, http_enabled=False)
    assert door_commands(off) == {} and door_banner(off) == ""


def test_banner_and_children_agree_on_where_the_doors_listen(tmp_path):
    settings = make_settings(tmp_path, dicom_port=11113, http_port=8081, dicom_ae_title="TRIAGE2")
    assert door_banner(settings) == ("  DICOM:    AE TRIAGE2 on port 11113\n"
                                     "  HTTP API: http://localhost:8081/v1/jobs (OpenAPI at /docs)\n")
    env = child_env(settings)
    assert (env["TRIAGE_DICOM_PORT"], env["TRIAGE_HTTP_PORT"], env["TRIAGE_DICOM_AE_TITLE"]) == (
        "11113", "8081", "TRIAGE2")
