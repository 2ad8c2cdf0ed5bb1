"""DICOM value-representation limits of the identifiers we store (PS3.5 section 6.2).

Checked at the door, on what a caller sends and on what a DICOM file holds, so a value
that breaks its VR is refused with a clear reason there, never cut (a cut identifier can
name another patient) and never refused later by PostgreSQL after a report was written.
Error messages name the rule, never the value: values are patient data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: UI: dot-separated numbers without leading zeros, 64 characters at most.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: Control characters are not allowed in LO, SH, PN or UI values (ESC only inside
#: ISO 2022 encoded bytes, which are decoded before a value gets here).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ValueRule:
    """One field's VR: ``max_chars`` per value (per component group for PN)."""

    vr: str
    max_chars: int
    keyword: str  # the DICOM attribute the field is read from

    def check(self, value: str) -> str:
        """The value with its insignificant padding removed, or ValueError saying why not."""
        text = value.strip(" \x00") if self.vr == "UI" else value.strip()
        if "\\" in text:
            raise ValueError(f"must be a single value (a backslash separates values in DICOM {self.vr})")
        if _CONTROL.search(text):
            raise ValueError(f"must not contain control characters (DICOM {self.vr})")
        if self.vr == "PN":
            _check_person_name(text, self.max_chars)
        elif len(text) > self.max_chars:
            raise ValueError(f"is longer than {self.max_chars} characters (DICOM {self.vr})")
        if self.vr == "UI" and text and not UID_PATTERN.fullmatch(text):
            raise ValueError("is not a valid DICOM UID (digits and dots, no leading zeros)")
        return text


def _check_person_name(text: str, max_chars: int) -> None:
    groups = text.split("=")
    if len(groups) > 3:
        raise ValueError("has more than 3 component groups (DICOM PN)")
    for group in groups:
        if len(group) > max_chars:
            raise ValueError(f"has a component group longer than {max_chars} characters (DICOM PN)")
        if group.count("^") > 4:
            raise ValueError("has more than 5 components in a group (DICOM PN)")


#: ImageMetadata field -> its rule. Body site: Code Meaning (LO) of the Anatomic Region
#: Sequence, or Body Part Examined.
FIELD_RULES: dict[str, ValueRule] = {
    "patient_id": ValueRule("LO", 64, "PatientID"),
    "patient_name": ValueRule("PN", 64, "PatientName"),
    "accession_number": ValueRule("SH", 16, "AccessionNumber"),
    "study_instance_uid": ValueRule("UI", 64, "StudyInstanceUID"),
    "series_instance_uid": ValueRule("UI", 64, "SeriesInstanceUID"),
    "sop_instance_uid": ValueRule("UI", 64, "SOPInstanceUID"),
    "sop_class_uid": ValueRule("UI", 64, "SOPClassUID"),
    "body_site": ValueRule("LO", 64, "BodyPartExamined"),
}
