"""The structured report: a Comprehensive SR holding a TID 1500 Measurement Report (highdicom).

Content: one image-level measurement group (TID 1501) about the source image, with the
algorithm identification (TID 4019: our model and its version), the melanoma probability
as a measurement (unit "no units", 0..1), the predicted class and the triage level as coded
qualitative evaluations (SNOMED CT where one fits, see :mod:`worker.results.codes`), and
the decision-support statement as a comment. The document is PRELIMINARY, PARTIAL and
UNVERIFIED: no clinician has read it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from worker.results.codes import (
    CLASS_CONCEPTS,
    DECISION_SUPPORT_STATEMENT,
    DERMOSCOPIC_PHOTOGRAPHY,
    MELANOMA_PROBABILITY,
    PREDICTED_CLASS,
    TRIAGE_CONCEPTS,
    TRIAGE_LEVEL,
)
from worker.results.dicom_objects import (
    CHARSET,
    MANUFACTURER,
    MODEL_NAME,
    SR_SERIES_NUMBER,
    local_coding_scheme,
    contributing_equipment,
    dicom_date,
    dicom_time,
    result_uid,
    software_version,
)
from worker.results.finished_job import FinishedJob


def build_structured_report(job: FinishedJob, source: Dataset) -> Dataset:
    """Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) in the source image's study."""
    import highdicom as hd

    algorithm = hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=job.model_version, family=codes.cid7162.ArtificialIntelligence,
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(job.job_id, "tracking"), identifier=f"melanoma-triage job {job.job_id}"),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=MELANOMA_PROBABILITY.dicom(),
                value=round(job.melanoma_probability, 6),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(PREDICTED_CLASS.dicom(),
                                        CLASS_CONCEPTS[job.predicted_class].dicom()),
            hd.sr.QualitativeEvaluation(TRIAGE_LEVEL.dicom(), TRIAGE_CONCEPTS[job.triage].dicom()),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        )],
    )
    # TID 1501 is extensible: the statement travels with the finding it qualifies.
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=DECISION_SUPPORT_STATEMENT, relationship_type="CONTAINS"))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", MODEL_NAME), name=MODEL_NAME, manufacturer_name=MANUFACTURER,
            model_name=job.model_version,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=DERMOSCOPIC_PHOTOGRAPHY.dicom(),
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=result_uid(job.job_id, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(job.job_id, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        contributing_equipment=[contributing_equipment(job)],
        series_description="AI triage result (decision support)",
        content_date=dicom_date(job.finished_at),
        content_time=dicom_time(job.finished_at),
        specific_character_set=CHARSET,
        manufacturer_model_name=MODEL_NAME,
        software_versions=[job.model_version, software_version()],
        coding_schemes=[local_coding_scheme()],
    )
    sr.InstanceCreationDate = dicom_date(job.finished_at)
    sr.InstanceCreationTime = dicom_time(job.finished_at)
    return sr
