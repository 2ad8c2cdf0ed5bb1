"""DICOM door faults of issue 18, against a live receiver (pynetdicom as the peer, as a
camera or PACS would send), each failing on the code before:

* half an instance was answered 0x0000 and rejected later by the worker, and the complete
  re-send with the same SOP Instance UID got 0xC000 against the rejected job, never triaged;
* an association addressed to any called AE title was accepted;
* the association limit is exact (``dicom_max_associations`` at once, not one fewer).
"""

from __future__ import annotations

import threading

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from schemas import JobState, RejectionReason
from tests.test_dicom_receiver import AE_TITLE, DERMOSCOPY, Door, dermoscopy_file, scu_store
from worker.db.integration import DicomInstance

CONTEXT = [(DERMOSCOPY, ExplicitVRLittleEndian)]


@pytest.fixture
def door(tmp_path):
    d = Door(tmp_path)
    yield d
    d.close()


def _half(path, out):
    """The file cut in the middle of its pixel data, as a sender that stopped half way."""
    data = path.read_bytes()
    _meta, offset = split_dataset(path)
    out.write_bytes(data[: offset + (len(data) - offset) // 2])
    return out


def test_a_truncated_instance_is_refused_and_never_blocks_the_complete_one(door, tmp_path):
    uid = generate_uid()
    complete = dermoscopy_file(tmp_path / "complete.dcm", sop_uid=uid)
    half = _half(complete, tmp_path / "half.dcm")

    assert scu_store(door.port, half, CONTEXT, raw=True) == 0xC000  # at the door, not later
    (rejected,) = door.jobs()
    assert rejected.state == JobState.REJECTED.value
    assert rejected.error_code == RejectionReason.TRUNCATED.value
    assert door.sent == []  # never queued for the worker

    assert scu_store(door.port, complete, CONTEXT) == 0x0000  # the complete one: accepted
    jobs = {j.id: j for j in door.jobs()}
    (new_id,) = set(jobs) - {rejected.id}
    assert jobs[new_id].state == JobState.QUEUED.value and door.sent == [new_id]
    with door.sessions() as s:
        link = s.execute(select(DicomInstance).where(DicomInstance.sop_instance_uid == uid)).scalar_one()
        assert (link.job_id, link.previous_job_id) == (new_id, rejected.id)  # the two are linked

    assert scu_store(door.port, complete, CONTEXT) == 0x0000  # a true re-send: the same job
    assert len(door.jobs()) == 2 and door.sent == [new_id]


def test_an_undecodable_instance_is_0xC000_and_recorded(door, tmp_path):
    """Rows claims four times the pixels that Pixel Data holds: it parses, it cannot be decoded."""
    path = dermoscopy_file(tmp_path / "bad.dcm")
    ds = dcmread(path)
    ds.Rows = ds.Rows * 4
    ds.save_as(path, enforce_file_format=True)
    assert scu_store(door.port, path, CONTEXT) == 0xC000
    (job,) = door.jobs()
    assert job.state == JobState.REJECTED.value and door.sent == []
    assert job.error_code in {RejectionReason.TRUNCATED.value, RejectionReason.DICOM_INVALID.value}


def _associate(port: int, called: str):
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_the_called_ae_title_must_be_ours(door):
    wrong = _associate(door.port, "NOTUS")
    assert not wrong.is_established and wrong.is_rejected
    right = _associate(door.port, AE_TITLE)
    try:
        assert right.is_established
    finally:
        right.release()


def test_the_association_limit_is_exact(tmp_path):
    door = Door(tmp_path, dicom_max_associations=10)
    held = []
    try:
        warm = _associate(door.port, AE_TITLE)  # one before, released: must not count
        warm.release()
        threads = [threading.Thread(target=lambda: held.append(_associate(door.port, AE_TITLE)))
                   for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(a.is_established for a in held) == 10
        eleventh = _associate(door.port, AE_TITLE)
        held.append(eleventh)
        assert not eleventh.is_established
    finally:
        for a in held:
            if a.is_established:
                a.release()
        door.close()
