"""Coded concepts of our results, shared by the DICOM SR and the FHIR bundle.

SNOMED CT wherever a concept fits the class the model reports; each code below was checked
against a published SNOMED CT release or DICOM PS3.16 (pydicom's code dictionary):

* 372244006 Malignant melanoma (disorder)
* 400096001 Melanocytic nevus (disorder)
* 254701007 Basal cell carcinoma of skin (disorder)
* 254651007 Squamous cell carcinoma of skin (disorder)  (PS3.16)
* 201101007 Actinic keratosis (disorder)  (PS3.16)
* 446078004 Dermoscopic photography  (PS3.16)

Local codes (coding scheme ``99MELTRIAGE`` in DICOM, :data:`LOCAL_FHIR_SYSTEM` in FHIR) are
used where no SNOMED CT concept matches what the model says: the ISIC classes
"dermatofibroma", "seborrheic keratosis", "pigmented benign keratosis" and "vascular lesion"
(we found no SNOMED code we could verify for the first two, and the last two are ISIC
groupings of several disorders), the triage levels, and "melanoma probability" (there is no
standard code for the probability of one specific disease).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import TriageLevel
from schemas.classes import DISPLAY_NAMES

SNOMED_DICOM = "SCT"
SNOMED_FHIR = "http://snomed.info/sct"
UCUM_FHIR = "http://unitsofmeasure.org"

#: Private DICOM coding scheme designator (PS3.3 8.2: private schemes start with "99").
LOCAL_DICOM_SCHEME = "99MELTRIAGE"
LOCAL_SCHEME_NAME = "melanoma-triage local codes"
#: The same codes in FHIR: a URN, since we own no web address for a code system.
LOCAL_FHIR_SYSTEM = "urn:melanoma-triage:codes"

#: Shown on every object we send: the result is software output, not a diagnosis.
DECISION_SUPPORT_STATEMENT = (
    "Decision support, not a diagnosis: produced by software and not verified by a clinician. "
    "The result must be reviewed by a qualified clinician together with the clinical history; "
    "a routine result does not exclude melanoma."
)


@dataclass(frozen=True)
class Concept:
    """One coded concept; ``local`` ones use our private scheme."""

    code: str
    meaning: str
    local: bool = False

    @property
    def dicom_scheme(self) -> str:
        return LOCAL_DICOM_SCHEME if self.local else SNOMED_DICOM

    def dicom(self):
        """As a pydicom ``Code`` (what highdicom takes)."""
        from pydicom.sr.coding import Code

        return Code(self.code, self.dicom_scheme, self.meaning)

    def fhir(self) -> dict:
        """As a FHIR Coding."""
        return {"system": LOCAL_FHIR_SYSTEM if self.local else SNOMED_FHIR,
                "code": self.code, "display": self.meaning}


def _local(code: str, meaning: str) -> Concept:
    if len(code) > 16:  # DICOM Code Value is SH
        raise ValueError(f"local code {code!r} is longer than 16 characters")
    return Concept(code, meaning, local=True)


#: The model's classes (schemas.CLASS_NAMES) as coded findings.
CLASS_CONCEPTS: dict[str, Concept] = {
    "actinic_keratosis": Concept("201101007", "Actinic keratosis"),
    "basal_cell_carcinoma": Concept("254701007", "Basal cell carcinoma of skin"),
    "dermatofibroma": _local("DF", DISPLAY_NAMES["dermatofibroma"]),
    "melanoma": Concept("372244006", "Malignant melanoma"),
    "nevus": Concept("400096001", "Melanocytic nevus"),
    "pigmented_benign_keratosis": _local("PBK",
                                         DISPLAY_NAMES["pigmented_benign_keratosis"]),
    "seborrheic_keratosis": _local("SK", DISPLAY_NAMES["seborrheic_keratosis"]),
    "squamous_cell_carcinoma": Concept("254651007", "Squamous cell carcinoma of skin"),
    "vascular_lesion": _local("VASC", DISPLAY_NAMES["vascular_lesion"]),
}

TRIAGE_CONCEPTS: dict[TriageLevel, Concept] = {
    TriageLevel.URGENT: _local("URGENT", "Urgent referral: suspected melanoma"),
    TriageLevel.SOON: _local("SOON", "Soon: suspected keratinocyte cancer or pre-cancer"),
    TriageLevel.ROUTINE: _local("ROUTINE", "Routine: no suspicious features detected"),
    TriageLevel.INDETERMINATE: _local("INDETERMINATE", "Indeterminate: clinician review"),
}

TRIAGE_LEVEL = _local("TRIAGE", "Triage level")
MELANOMA_PROBABILITY = _local("P-MELANOMA", "Melanoma probability")
PREDICTED_CLASS = _local("CLASS", "Predicted lesion class")
DERMOSCOPIC_PHOTOGRAPHY = Concept("446078004", "Dermoscopic photography")

