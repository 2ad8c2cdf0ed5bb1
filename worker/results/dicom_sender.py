"""C-STORE SCU: hand our result objects to a PACS (or any storage SCP).

Decisions:
* Presentation contexts are requested explicitly, one per SOP class we send, in explicit
  and implicit VR little endian: pynetdicom's prebuilt storage list lacks Dermoscopic
  Photography (77.1.7), and a PACS should not have to offer what we never send.
* ``send_c_store`` returns an empty Dataset on abort or timeout: that is a failed attempt,
  checked before ``.Status`` is read. Success (0x0000) and the storage warnings
  (0xB000, 0xB006, 0xB007: stored with coercion) count as stored.
* One association per attempt for all objects of a job; any failure fails the attempt,
  and the retry sends them all again: our SOP Instance UIDs are fixed per job, so a PACS
  that already stored one simply stores it again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from worker.results.errors import DeliveryError, DeliveryRefused

log = logging.getLogger(__name__)

#: Storage statuses that mean "stored" (PS3.4 B.2.3).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})

_DESTINATION = re.compile(r"^\s*(?P<ae>[^@\s\\][^@\\]{0,15})@(?P<host>[^:@\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})\s*$")


@dataclass(frozen=True)
class DicomDestination:
    """A storage SCP: called AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> DicomDestination:
        """``AE@host:port``; the AE title is 1-16 characters without a backslash."""
        m = _DESTINATION.match(text)
        if not m or not 0 < int(m["port"]) < 65536 or not m["ae"].strip():
            raise ValueError(f"not a DICOM destination (expected AE@host:port): {text!r}")
        return cls(m["ae"].strip(), m["host"].strip("[]"), int(m["port"]))


def parse_destinations(text: str) -> list[DicomDestination]:
    """Comma-separated ``AE@host:port`` list (``TRIAGE_DICOM_DESTINATIONS``); empty allowed."""
    return [DicomDestination.parse(part) for part in text.split(",") if part.strip()]


def send_files(destination: DicomDestination, paths: list[Path], calling_ae: str,
               timeout_s: float = 30.0) -> None:
    """Store every file on one association, or raise :class:`DeliveryError` saying why."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class in dict.fromkeys(ds.SOPClassUID for ds in datasets):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise DeliveryError(f"association rejected by {destination}")
        raise DeliveryError(f"no association with {destination} (refused, aborted or timed out)")
    try:
        for ds in datasets:
            _store_one(assoc, ds, destination)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _store_one(assoc, ds, destination: DicomDestination) -> None:
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    if ds.SOPClassUID not in accepted:
        raise DeliveryRefused(f"{destination} does not accept SOP class {ds.SOPClassUID}")
    try:
        status = assoc.send_c_store(ds)
    except (RuntimeError, ValueError) as exc:  # no context after all, or the link dropped
        raise DeliveryError(f"C-STORE to {destination} failed ({type(exc).__name__})") from None
    if not status:  # empty Dataset: aborted, or no response within the DIMSE timeout
        raise DeliveryError(f"no C-STORE response from {destination} (aborted or timed out)")
    code = int(status.get("Status", -1))
    if code not in STORED_STATUSES:
        raise DeliveryError(f"C-STORE of {ds.SOPClassUID} refused by {destination}: status 0x{code:04X}")
    log.info("stored %s on %s (status 0x%04X)", ds.SOPClassUID, destination, code)
