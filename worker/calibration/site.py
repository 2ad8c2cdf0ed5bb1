"""Thresholds for one site from its confirmed cases, as a new model version.

1. **Cases**: every image with a confirmed diagnosis (``worker.retrain.truth``, the same
   precedence rule as ``metrics``) and a prediction by a model with the *same weights and
   temperature* as the base version (its probabilities are then the base's). Unusable images
   (quality gate) are left out: they are indeterminate whatever the thresholds.
2. **Evidence**: at least ``min_melanoma`` (30) melanomas and ``min_benign`` (100) other
   lesions, or nothing is proposed.
3. **Operating point**: ``worker.calibration.thresholds``: the urgent threshold whose
   out-of-bag sensitivity reaches 0.95; the soon threshold the same way (target 0.90, as in
   training) when there are ``min_keratinocyte`` (30) BCC/SCC/actinic keratoses, else the
   base's. ``min_confidence`` and the class call stay the base's.
4. **Gate**: the promotion gate of retraining (``worker.retrain.gates``, same policy
   settings) on the site's cases: evidence, AUC non-inferiority (same probabilities: the
   difference is 0), calibration error, and melanoma sensitivity, taken out of bag (the
   in-sample sensitivity at a threshold chosen on the same cases would pass by construction).
5. **Version**: ``worker.store.derived``: a new folder with the base's model file and
   artefacts, ``model.json`` with the new thresholds, ``parent_version`` = base, the
   provenance in ``notes``, ``training_command`` and ``metrics["site"]``,
   ``site_calibration.json`` (the whole proposal) and a model card;
   added to the store, not made current: ``models promote`` and ``models rollback`` do that.
   Its shift-monitor reference is the site's own recent traffic (``calibrate`` passes it
   in), so that the monitor then watches for drift from the site; without one, the
   parent's (same weights), replayed with the new thresholds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas import CLASS_NAMES, MELANOMA, MELANOMA_INDEX, SOON_CLASSES, ModelMetadata, TriageThresholds
from worker.calibration.thresholds import Interval, OperatingPoint, choose_operating_point, interval_at
from worker.db.models import Image, Job, Prediction
from worker.errors import TriageError
from worker.store.versions import METADATA_FILE, ModelStore

PROPOSAL_FILE = "site_calibration.json"
#: ``kind`` of the derived version: in its name (``<time>-<sha8>-site-<tag>``) and the key of
#: the provenance in ``model.json`` ``metrics``.
SITE_KIND = "site"
SOON_SENSITIVITY = 0.90


class CalibrationRefused(TriageError):
    """Not enough evidence, or the gate said no: nothing is proposed."""


@dataclass(frozen=True)
class SitePolicy:
    min_melanoma: int = 30
    min_benign: int = 100
    min_keratinocyte: int = 30
    required_sensitivity: float = 0.95
    soon_sensitivity: float = SOON_SENSITIVITY
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class SiteCases:
    """The site's usable confirmed cases with the base's probabilities."""

    image_sha256: list[str]
    diagnoses: list[str]
    probs: np.ndarray  # (n, 9), calibrated, CLASS_NAMES order
    counts: dict = field(default_factory=dict)

    @property
    def melanoma(self) -> np.ndarray:
        return np.array([d == MELANOMA for d in self.diagnoses])

    def digest(self) -> str:
        """Names the case set (content hashes and diagnoses; no patient data)."""
        h = hashlib.sha256()
        for sha, dx in sorted(zip(self.image_sha256, self.diagnoses)):
            h.update(f"{sha}:{dx}\n".encode())
        return h.hexdigest()


def equivalent_versions(store: ModelStore, base: str) -> list[str]:
    """Versions whose probabilities are the base's: same model file and temperature."""
    meta = store.metadata(base)
    out = []
    for v in store.list_versions():
        try:
            m = store.metadata(v)
        except Exception:
            continue
        if m.sha256 == meta.sha256 and m.temperature == meta.temperature:
            out.append(v)
    return out


def gather_cases(session: Session, store: ModelStore, base: str,
                 rescore: Callable[[list[str]], dict[str, np.ndarray]] | None = None) -> SiteCases:
    """Confirmed cases with the base's probabilities; ``rescore`` (archive paths -> probability
    rows) scores the confirmed images no equivalent version has predicted yet."""
    from worker.retrain.truth import effective_truth

    truth = effective_truth(session)
    versions = equivalent_versions(store, base)
    latest: dict[str, tuple[np.ndarray, bool]] = {}
    if truth:
        rows = session.execute(
            select(Prediction, Job.image_id).join(Job, Job.id == Prediction.job_id)
            .where(Job.image_id.in_(list(truth)), Prediction.model_version.in_(versions))
            .order_by(Prediction.created_at))
        for pred, image_id in rows:
            probs = pred.probabilities()
            latest[image_id] = (np.array([probs[c] for c in CLASS_NAMES]), bool(pred.image_usable))
    images = {i: (sha, path) for i, sha, path in session.execute(
        select(Image.id, Image.sha256, Image.archive_path).where(Image.id.in_(list(truth))))} if truth else {}
    missing = [i for i in truth if i not in latest and images.get(i, (None, None))[1]]
    rescored = 0
    if missing and rescore is not None:
        scored = rescore([images[i][1] for i in missing])
        for i in missing:
            if images[i][1] in scored:
                latest[i] = (scored[images[i][1]], True)
                rescored += 1
    keep = sorted(i for i, (_, usable) in latest.items() if usable)
    counts = {"confirmed": len(truth), "scored": len(latest), "rescored": rescored,
              "unscored": len(truth) - len(latest),
              "unusable": sum(not usable for _, usable in latest.values()), "used": len(keep)}
    return SiteCases(image_sha256=[images[i][0] or "" for i in keep], diagnoses=[truth[i][0] for i in keep],
                     probs=np.array([latest[i][0] for i in keep]).reshape(-1, len(CLASS_NAMES)), counts=counts)


@dataclass
class Proposal:
    base_version: str
    thresholds: TriageThresholds
    urgent: OperatingPoint
    soon: OperatingPoint | None
    base_urgent: dict  # the base threshold on these cases: sensitivity/specificity intervals
    base_soon: dict
    gate: dict
    counts: dict
    cases_sha256: str
    created_at: str

    @property
    def passed(self) -> bool:
        return bool(self.gate.get("promote"))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = self.thresholds.model_dump()
        return d


def _gate(cases: SiteCases, base: ModelMetadata, thresholds: TriageThresholds, urgent: OperatingPoint,
          gate_policy) -> dict:
    from worker.retrain import gates

    y = cases.melanoma.astype(int)
    labels = np.array([CLASS_NAMES.index(d) for d in cases.diagnoses])
    champion = gates.score(base.version, cases.probs, y, labels, base.thresholds.urgent_melanoma, MELANOMA_INDEX)
    challenger = gates.score(f"{base.version} with site thresholds", cases.probs, y, labels,
                             thresholds.urgent_melanoma, MELANOMA_INDEX)
    # The threshold was chosen on these cases: judge its sensitivity out of bag.
    challenger = replace(challenger, sensitivity=urgent.expected_sensitivity)
    p = cases.probs[:, MELANOMA_INDEX]
    diff = gates.paired_auc_difference(y, p, p, gate_policy.n_boot, gate_policy.confidence, gate_policy.seed)
    decision = gates.decide(champion, challenger, diff, gate_policy)
    return {**decision.as_dict(), "policy": gates.policy_dict(gate_policy),
            "champion": asdict(champion), "challenger": asdict(challenger),
            "sensitivity_note": "challenger sensitivity is the out-of-bag estimate"}


def propose(cases: SiteCases, base: ModelMetadata, policy: SitePolicy = SitePolicy(), gate_policy=None,
            now: datetime | None = None) -> Proposal:
    """Thresholds for this site, or CalibrationRefused with the reason."""
    from worker.retrain import gates

    y = cases.melanoma
    n_mel, n_other = int(y.sum()), int((~y).sum())
    if n_mel < policy.min_melanoma or n_other < policy.min_benign:
        raise CalibrationRefused(
            f"not enough confirmed cases: {n_mel} melanomas and {n_other} other lesions usable, "
            f"{policy.min_melanoma} and {policy.min_benign} needed ({cases.counts})")
    now = now or datetime.now(timezone.utc)
    p_mel = cases.probs[:, MELANOMA_INDEX]
    urgent = choose_operating_point(y, p_mel, policy.required_sensitivity, policy.n_boot, policy.confidence,
                                    policy.seed)
    soon_idx = [CLASS_NAMES.index(c) for c in SOON_CLASSES]
    y_soon = np.isin(cases.diagnoses, list(SOON_CLASSES))
    p_soon = cases.probs[:, soon_idx].sum(axis=1)
    soon = None
    if y_soon.sum() >= policy.min_keratinocyte and (~y_soon).sum() >= policy.min_benign:
        soon = choose_operating_point(y_soon, p_soon, policy.soon_sensitivity, policy.n_boot, policy.confidence,
                                      policy.seed)
    bt = base.thresholds
    soon_sens, soon_spec = interval_at(y_soon, p_soon, bt.soon_keratinocyte, 2 * policy.n_boot, policy.confidence,
                                       policy.seed) if y_soon.any() and (~y_soon).any() else (None, None)
    thresholds = bt.model_copy(update={
        "urgent_melanoma": urgent.threshold, "urgent_sensitivity": urgent.expected_sensitivity,
        "urgent_specificity": urgent.expected_specificity,
        **({"soon_keratinocyte": soon.threshold, "soon_sensitivity": soon.expected_sensitivity,
            "soon_specificity": soon.expected_specificity} if soon else {})})
    digest = cases.digest()
    sens, spec = interval_at(y, p_mel, bt.urgent_melanoma, 2 * policy.n_boot, policy.confidence, policy.seed)
    gate_policy = gate_policy or gates.GatePolicy()
    gate_policy = replace(gate_policy, min_positives=policy.min_melanoma, min_negatives=policy.min_benign)
    gate = _gate(cases, base, thresholds, urgent, gate_policy)
    return Proposal(base_version=base.version, thresholds=thresholds, urgent=urgent, soon=soon,
                    base_urgent={"threshold": bt.urgent_melanoma, "sensitivity": asdict(sens),
                                 "specificity": asdict(spec)},
                    base_soon={"threshold": bt.soon_keratinocyte,
                               "sensitivity": asdict(soon_sens) if soon_sens else None,
                               "specificity": asdict(soon_spec) if soon_spec else None},
                    gate=gate,
                    counts=cases.counts | {"melanoma": n_mel, "other": n_other, "keratinocyte": int(y_soon.sum())},
                    cases_sha256=digest, created_at=now.isoformat(timespec="seconds"))


def _model_card(version: str, base_card: str | None, proposal: Proposal) -> str:
    u, b = proposal.urgent, proposal.base_urgent
    lines = [
        f"# Model card: {version}",
        "",
        f"Site calibration of `{proposal.base_version}`: the same network and temperature, thresholds "
        f"chosen on this site's {proposal.counts['used']} confirmed cases ({proposal.counts['melanoma']} "
        f"melanomas) by `melanoma-triage calibrate` on {proposal.created_at}.",
        "",
        "| | base threshold | site threshold |",
        "|---|---|---|",
        f"| urgent melanoma probability | {b['threshold']:.4f} | {u.threshold:.4f} |",
        f"| sensitivity on the site's cases (95 % CI) | {Interval(**b['sensitivity']).text()} | {u.sensitivity.text()} |",
        f"| specificity on the site's cases (95 % CI) | {Interval(**b['specificity']).text()} | {u.specificity.text()} |",
        f"| expected on new cases (out of bag) | | sensitivity {u.expected_sensitivity:.3f}, "
        f"specificity {u.expected_specificity:.3f} |",
        "",
        (f"Soon threshold: site-calibrated, {proposal.soon.threshold:.4f}." if proposal.soon else
         "Soon threshold: the base version's (too few confirmed keratinocyte lesions)."),
        f"Gate: {'passed' if proposal.passed else 'FAILED'}: " + "; ".join(proposal.gate.get("reasons", [])),
        "",
    ]
    if base_card:
        lines += ["## The base version's model card", "", base_card]
    return "\n".join(lines) + "\n"


def write_version(store: ModelStore, proposal: Proposal, command: str, staging_root: Path,
                  reference: dict | None = None) -> str:
    """The proposal as a new version in the store (``worker.store.derived``: the base's weights
    and artefacts, the new thresholds; not current); returns its name. ``reference``: the shift
    monitor's reference for it (``shift.traffic_reference``); without one the monitor uses the
    parent's, replayed with the new thresholds."""
    from worker.monitor.reference import REFERENCE_FILE
    from worker.store.derived import derive_version

    base_dir = store.version_dir(proposal.base_version)
    base = store.metadata(proposal.base_version)
    card = base_dir / "model_card.md"
    base_card = card.read_text() if card.is_file() else None
    provenance = proposal.as_dict()
    u = proposal.urgent

    def finish(folder: Path) -> None:
        version = json.loads((folder / METADATA_FILE).read_text())["version"]
        (folder / "model_card.md").write_text(_model_card(version, base_card, proposal))
        if reference is not None:
            (folder / REFERENCE_FILE).write_text(json.dumps(reference | {"version": version}, indent=1))

    return derive_version(
        store, base.version, proposal.thresholds, kind=SITE_KIND, provenance=provenance, command=command,
        notes=(f"site calibration of {base.version}: urgent threshold {base.thresholds.urgent_melanoma:.4f} -> "
               f"{u.threshold:.4f} from {proposal.counts['used']} confirmed cases ({proposal.counts['melanoma']} "
               f"melanomas, case set sha256 {proposal.cases_sha256[:12]}); expected sensitivity "
               f"{u.expected_sensitivity:.3f}, specificity {u.expected_specificity:.3f} (out of bag); same "
               "weights and temperature"),
        extra_files={PROPOSAL_FILE: json.dumps(provenance, indent=1)}, finish=finish,
        staging_root=staging_root, now=datetime.fromisoformat(proposal.created_at))


def archive_rescorer(store: ModelStore, base: str, bind=None) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """Scores archived images with the base version (loads TensorFlow on first use); ``bind``:
    the database that holds ``db:`` locations (``TRIAGE_STORAGE=database``)."""

    def rescore(paths: list[str]) -> dict[str, np.ndarray]:
        from worker.classify.inference import Classifier
        from worker.imaging import assess_quality, decode_bytes
        from worker.intake import archive

        classifier = Classifier.from_store(store, base)
        out = {}
        for path in paths:
            try:
                rgb = decode_bytes(archive.load(path, bind)).rgb
            except Exception:  # gone or unreadable: counted as unscored
                continue
            if assess_quality(rgb)[0]:
                probs = classifier.probabilities(rgb)
                out[path] = np.array([probs[c] for c in CLASS_NAMES])
        return out

    return rescore


def format_proposal(p: Proposal) -> list[str]:
    """The proposal in a few lines for the terminal."""
    u, b = p.urgent, p.base_urgent
    c = p.counts
    lines = [
        f"site cases: {c['used']} usable confirmed cases ({c['melanoma']} melanomas, {c['other']} other; "
        f"{c['unusable']} unusable and {c['unscored']} unscored left out)",
        f"urgent threshold: {b['threshold']:.4f} (base) -> {u.threshold:.4f} (site)",
        f"  base on these cases: sensitivity {Interval(**b['sensitivity']).text()}, "
        f"specificity {Interval(**b['specificity']).text()}",
        f"  site on these cases: sensitivity {u.sensitivity.text()}, specificity {u.specificity.text()}",
        f"  expected on new cases (out of bag): sensitivity {u.expected_sensitivity:.3f}, "
        f"specificity {u.expected_specificity:.3f} (in-sample target {u.in_sample_target:.2f})",
        (f"soon threshold: {p.base_soon['threshold']:.4f} (base) -> {p.soon.threshold:.4f} (site)" if p.soon
         else f"soon threshold: {p.thresholds.soon_keratinocyte:.4f} (base kept; {c['keratinocyte']} keratinocyte "
              f"lesions, {SitePolicy().min_keratinocyte} needed)"),
    ]
    if p.soon:
        bs = p.base_soon
        lines += [f"  base on these cases: keratinocyte sensitivity {Interval(**bs['sensitivity']).text()}, "
                  f"specificity {Interval(**bs['specificity']).text()}",
                  f"  site on these cases: keratinocyte sensitivity {p.soon.sensitivity.text()}, "
                  f"specificity {p.soon.specificity.text()}",
                  f"  expected on new cases (out of bag): sensitivity {p.soon.expected_sensitivity:.3f}, "
                  f"specificity {p.soon.expected_specificity:.3f}"]
    lines.append(f"gate: {'passed' if p.passed else 'FAILED'}")
    lines += [f"  - {r}" for r in p.gate.get("reasons", [])]
    return lines
