"""Adaptation to a site without labels: a derived version from the site's unlabelled images.

A new site has images long before it has confirmed diagnoses (``calibrate`` needs those).
``melanoma-triage adapt`` proposes a derived version from images alone:

1. **BatchNorm statistics (AdaBN)** (``--bn``, off by default: on the leave-one-source-out
   folds it lowered the held-out AUC, README): the float model's BatchNorm moving means and
   variances are re-estimated on the site's images (every BatchNorm layer, inside the
   backbone too; the running average of per-batch statistics in a training-mode forward
   pass; no weight is trained). The LiteRT export is then made from the adapted model when
   the version enters the store, as for any version.
2. **Urgent threshold** (``--threshold``): moved on the log-odds scale (only downwards unless
   ``--direction both``: measured, upward moves cost sensitivity) by a label-free estimate of
   the site's shift: the median melanoma log-odds of the site's images under the
   (adapted) model minus the median of the locked evaluation set under the base model (both
   sets are mostly benign, so the medians follow the benign bulk, which is what the urgent
   threshold has to stay above or below).
3. **Guard**: the locked evaluation set (the base version's test split of the training data,
   which no version has trained on) is scored by the adapted model, and the urgent threshold
   is capped at the largest one that keeps melanoma sensitivity >= 0.95 there. The promotion
   gate's sensitivity and evidence checks (``worker.retrain.gates``) run on the locked set;
   its calibration error and AUC before and after are recorded, not gated (AdaBN moves them
   on purpose: the statistics are the site's, not the locked set's).
4. **Version**: a new folder with the adapted ``model.keras`` (or the base's, when only the
   threshold moved), ``model.json`` with ``parent_version``, the new threshold, the provenance
   in ``metrics["adapt"]`` and ``adaptation.json``; added to the store (exported to LiteRT on
   the way in), not made current: ``models promote`` does that.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from schemas import MELANOMA_INDEX, ModelMetadata
from worker.errors import TriageError

ADAPT_KIND = "adapt"
ADAPTATION_FILE = "adaptation.json"
#: The base's LiteRT export and its record: not inherited when the weights change.
SERVING_FILES = frozenset({"model.tflite", "serving.json"})
_EPS = 1e-12
BN_MODES = ("aligned", "site")
DIRECTIONS = ("down", "both")


class AdaptRefused(TriageError):
    """Too few site images, or no usable locked evaluation set: nothing is proposed."""


@dataclass(frozen=True)
class AdaptPolicy:
    bn: bool = False  # measured on the LOSO folds: re-estimated statistics lowered AUC
    #: ``aligned``: site activations mapped onto the locked set's (:func:`adapt_batchnorm_aligned`);
    #: ``site``: plain AdaBN, the site's statistics replace the stored ones.
    bn_mode: str = "aligned"
    #: ``down``: the label-free shift may only lower the urgent threshold (measured: an upward
    #: shift lowered sensitivity at held-out sources); ``both``: either way.
    direction: str = "down"
    threshold: bool = True
    min_images: int = 50
    required_sensitivity: float = 0.95
    batch_size: int = 32


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batchnorm_layers(layer))
    return found


def adapt_batchnorm(model, images: np.ndarray, batch_size: int = 32) -> int:
    """Re-estimate every BatchNorm layer's moving statistics on ``images`` (uint8-range RGB at
    the model's input size), in place; returns how many layers were re-estimated.

    Batch k (from 0) runs in training mode with momentum k / (k + 1), so the moving
    statistics end as the mean of the per-batch statistics. Only BatchNorm statistics change:
    no optimizer runs; dropout's training mode has no effect on them (it sits after pooling)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    try:
        for layer in layers:
            layer.trainable = True
        n_batches = 0
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start:start + batch_size], dtype=np.float32)
            if len(batch) < 2:
                continue  # a single image has no batch variance
            for layer in layers:
                layer.momentum = n_batches / (n_batches + 1)
            model(batch, training=True)
            n_batches += 1
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(layers)


def _bn_input_moments(model, images: np.ndarray, batch_size: int = 32,
                      only=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, variance) per channel of every BatchNorm layer's input over ``images`` in
    inference mode, in :func:`batchnorm_layers` order (nested models included); ``only``: just
    that layer's (a one-item list; the network runs only as far as it)."""
    import keras

    def wanted(layer) -> bool:
        return only is None or layer is only

    def collect(net, x_batches) -> list[list]:
        bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization) and wanted(layer)]
        nested = [layer for layer in net.layers if not isinstance(layer, keras.layers.BatchNormalization)
                  and hasattr(layer, "layers") and any(wanted(b) for b in batchnorm_layers(layer))]
        # a nested model's input in *this* graph: the tensor of the call that placed it here
        probe = keras.Model(net.inputs, [layer.input for layer in bns]
                            + [n._inbound_nodes[-1].input_tensors[0] for n in nested])
        sums: list[list] = [[0.0, 0.0, 0] for _ in bns]
        nested_inputs: list[list] = [[] for _ in nested]
        for batch in x_batches:
            outs = probe(batch, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for k, out in enumerate(outs[:len(bns)]):
                a = np.asarray(out, dtype=np.float64).reshape(-1, out.shape[-1])
                sums[k][0] += a.sum(axis=0)
                sums[k][1] += np.square(a).sum(axis=0)
                sums[k][2] += a.shape[0]
            for k, out in enumerate(outs[len(bns):]):
                nested_inputs[k].append(np.asarray(out))
        found = {id(b): (s0 / n, s1 / n - np.square(s0 / n)) for b, (s0, s1, n) in zip(bns, sums)}
        for n, parts in zip(nested, nested_inputs):
            for layer, moments in zip(batchnorm_layers(n), collect(n, parts)):
                found[id(layer)] = moments
        return [found[id(layer)] for layer in batchnorm_layers(net) if id(layer) in found]

    batches = [np.asarray(images[i:i + batch_size], dtype=np.float32) for i in range(0, len(images), batch_size)]
    return collect(model, batches)


def adapt_batchnorm_aligned(model, site: np.ndarray, source: np.ndarray, batch_size: int = 32,
                            max_images: int = 96) -> int:
    """Re-normalise every BatchNorm layer so that the site's activations are mapped onto the
    source's: for a network whose BatchNorm statistics are not its training data's (the
    trainer freezes BatchNorm at the ImageNet statistics), plain AdaBN replaces statistics the
    later layers were trained against; this keeps them and removes only the site's shift.

    Per channel, with the layer's moving mean ``m`` and variance ``v`` and its input's mean and
    standard deviation on the source (``mu_s``, ``sd_s``, the original model) and on the site
    (``mu_t``, ``sd_t``): the layer then computes on the site input ``x`` what it computed on
    ``(x - mu_t) * sd_s / sd_t + mu_s``: ``m' = mu_t - (mu_s - m) * sd_t / sd_s``,
    ``v' = (v + eps) * (sd_t / sd_s)^2 - eps``.

    Layers are re-normalised one at a time in network order, each with the site's statistics
    measured through the layers already re-normalised (correcting every layer from one pass of
    the original network corrects the same shift again at every depth: measured, it wrecks the
    model). That is one pass per layer, so at most ``max_images`` images of each set are used.
    Returns how many layers were re-normalised."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    rng = np.random.default_rng(0)
    site = np.asarray(site)[np.sort(rng.permutation(len(site))[:max_images])]
    source = np.asarray(source)[np.sort(rng.permutation(len(source))[:max_images])]
    original = [(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)) for layer in layers]
    src = _bn_input_moments(model, source, batch_size)
    for k, layer in enumerate(layers):
        (mu_t, var_t), = _bn_input_moments(model, site, batch_size, only=layer)
        (m, v), (mu_s, var_s) = original[k], src[k]
        ratio = np.sqrt(np.maximum(var_t, 1e-12) / np.maximum(var_s, 1e-12))
        eps = float(layer.epsilon)
        layer.moving_mean.assign((mu_t - (mu_s - m) * ratio).astype(np.float32))
        layer.moving_variance.assign(np.maximum((v + eps) * ratio**2 - eps, 0.0).astype(np.float32))
    return len(layers)


def probabilities(model, images: np.ndarray, temperature: float) -> np.ndarray:
    from worker.classify.inference import predict_probabilities

    return predict_probabilities(model, images, temperature)


def needed_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float | None:
    from worker.training.calibration import sensitivity_threshold

    return sensitivity_threshold(y, p, target) if int(np.sum(y)) else None


@dataclass
class LockedSet:
    """The locked evaluation images of the base version, with their truth."""

    images: np.ndarray
    melanoma: np.ndarray
    labels: np.ndarray  # class index, -1 where only the melanoma axis is known


@dataclass
class AdaptProposal:
    base_version: str
    created_at: str
    n_site_images: int
    site_sha256: str
    policy: dict
    bn_layers: int
    base_threshold: float
    shift_log_odds: float | None
    shifted_threshold: float
    locked_ceiling: float | None
    threshold: float
    locked: dict  # before / after: AUC, sensitivity, specificity at each one's threshold
    gate: dict
    site_urgent_rate: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.gate.get("promote"))

    def as_dict(self) -> dict:
        return asdict(self)


def site_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def propose(model, meta: ModelMetadata, site_images: np.ndarray, locked: LockedSet,
            policy: AdaptPolicy = AdaptPolicy(), gate_policy=None,
            base_locked: np.ndarray | None = None) -> AdaptProposal:
    """Adapt ``model`` (in place when ``policy.bn``) to ``site_images`` and choose the urgent
    threshold under the locked-set guard; the proposal says what changed and the gate.
    ``base_locked``: P(melanoma) of the locked set under the unadapted model, when known."""
    from worker.retrain import gates

    if len(site_images) < policy.min_images:
        raise AdaptRefused(f"{len(site_images)} usable site images; adapt needs {policy.min_images}")
    if int(np.sum(locked.melanoma)) == 0:
        raise AdaptRefused("the locked evaluation set has no melanoma: the sensitivity guard cannot be checked")
    if base_locked is None:
        base_locked = probabilities(model, locked.images, meta.temperature)[:, MELANOMA_INDEX]
    if policy.bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, not {policy.bn_mode!r}")
    n_bn = 0
    if policy.bn and policy.bn_mode == "site":
        n_bn = adapt_batchnorm(model, site_images, policy.batch_size)
    elif policy.bn:
        n_bn = adapt_batchnorm_aligned(model, site_images, locked.images, batch_size=policy.batch_size)
    site_p = probabilities(model, site_images, meta.temperature)[:, MELANOMA_INDEX]
    locked_probs = probabilities(model, locked.images, meta.temperature) if n_bn else None
    locked_p = locked_probs[:, MELANOMA_INDEX] if locked_probs is not None else base_locked
    base_t = float(meta.thresholds.urgent_melanoma)
    shift = float(np.median(log_odds(site_p)) - np.median(log_odds(base_locked))) if policy.threshold else None
    if policy.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {policy.direction!r}")
    moved = shift if shift is None or policy.direction == "both" else min(shift, 0.0)
    shifted = sigmoid(float(log_odds(np.array([base_t]))[0]) + moved) if moved is not None else base_t
    ceiling = needed_threshold(locked.melanoma, locked_p, policy.required_sensitivity)
    threshold = min(shifted, ceiling) if ceiling is not None else shifted
    y = np.asarray(locked.melanoma).astype(int)
    if locked_probs is None:
        locked_probs = probabilities(model, locked.images, meta.temperature)
    # The locked set is not the site: an AdaBN model is normalised for the site's images, so
    # its calibration there is not checked (ECE recorded); evidence and sensitivity are.
    gp = replace(gates.GatePolicy() if gate_policy is None else gate_policy, max_ece=1.0)
    challenger = gates.score("adapted", locked_probs, y, locked.labels, threshold, MELANOMA_INDEX)
    decision = gates.decide(None, challenger, None, gp)
    return AdaptProposal(
        base_version=meta.version, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        n_site_images=len(site_images), site_sha256=site_digest(site_images), policy=asdict(policy),
        bn_layers=n_bn, base_threshold=base_t, shift_log_odds=shift, shifted_threshold=float(shifted),
        locked_ceiling=ceiling, threshold=float(threshold),
        locked={"before": _at(y, base_locked, base_t), "after": _at(y, locked_p, threshold)},
        gate=decision.as_dict() | {"challenger": asdict(challenger)},
        site_urgent_rate={"before_threshold": float(np.mean(site_p >= base_t)),
                          "after": float(np.mean(site_p >= threshold))},
    )


def _at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from worker.training.metrics import binary_sens_spec, finite_or_none

    auc = None
    if 0 < y.sum() < y.size:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, p))
    sens, spec = binary_sens_spec(y, p, threshold)
    return {"threshold": float(threshold), "auc": auc, "sensitivity": finite_or_none(sens),
            "specificity": finite_or_none(spec)}


def _model_card(version: str, base_card: str | None, p: AdaptProposal) -> str:
    before, after = p.locked["before"], p.locked["after"]
    lines = [
        f"# Model card: {version}",
        "",
        f"Unlabelled site adaptation of `{p.base_version}` by `melanoma-triage adapt` on {p.created_at}, "
        f"from {p.n_site_images} site images (no diagnoses).",
        "",
        f"- BatchNorm statistics re-estimated on the site's images: "
        f"{'yes, ' + str(p.bn_layers) + ' layers' if p.bn_layers else 'no (same weights)'}",
        f"- urgent threshold: {p.base_threshold:.4f} -> {p.threshold:.4f} (label-free shift "
        f"{p.shift_log_odds if p.shift_log_odds is None else round(p.shift_log_odds, 3)} log-odds proposed "
        f"{p.shifted_threshold:.4f}; locked-set ceiling for sensitivity 0.95: {p.locked_ceiling})",
        f"- share of the site's images flagged urgent: {p.site_urgent_rate.get('before_threshold', 0):.3f} "
        f"at the base threshold, {p.site_urgent_rate.get('after', 0):.3f} after",
        "",
        "| locked evaluation set | base | adapted |",
        "|---|---|---|",
        f"| melanoma AUC | {before['auc']} | {after['auc']} |",
        f"| sensitivity at its threshold | {before['sensitivity']} | {after['sensitivity']} |",
        f"| specificity at its threshold | {before['specificity']} | {after['specificity']} |",
        "",
        f"Gate: {'passed' if p.passed else 'FAILED'}: " + "; ".join(p.gate.get("reasons", [])),
        "",
    ]
    if base_card:
        lines += ["## The base version's model card", "", base_card]
    return "\n".join(lines) + "\n"


def adapted_name(base: ModelMetadata, proposal: AdaptProposal, sha256: str, now: datetime) -> str:
    """``<time>-<weights sha256[:8]>-adapt-<tag>``: the tag names the site images, the
    threshold and the policy."""
    tag = hashlib.sha256(f"{proposal.site_sha256}{proposal.threshold}{proposal.policy}".encode()).hexdigest()[:6]
    return f"{now:%Y%m%d-%H%M}-{sha256[:8]}-{ADAPT_KIND}-{tag}"


def write_version(store, model, proposal: AdaptProposal, command: str, staging_root: Path | None = None) -> str:
    """The proposal as a new version in ``store`` (not current): the base's artefacts, the
    adapted ``model.keras`` when BatchNorm statistics changed, the new threshold and the
    provenance; the store exports it to LiteRT on the way in. Returns its name."""
    from worker.store.derived import NOT_INHERITED
    from worker.store.versions import METADATA_FILE, MODEL_FILE, file_sha256

    base = store.metadata(proposal.base_version)
    base_dir = store.version_dir(proposal.base_version)
    now = datetime.fromisoformat(proposal.created_at)
    if staging_root is not None:
        Path(staging_root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=staging_root, prefix="adapt."))
    try:
        for item in base_dir.iterdir():
            if item.name in NOT_INHERITED or item.name.startswith("."):
                continue
            if proposal.bn_layers and item.name in SERVING_FILES:
                continue  # new weights: the store makes a new export
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        if proposal.bn_layers:
            (staging / MODEL_FILE).unlink(missing_ok=True)
            model.save(staging / MODEL_FILE)
        sha = file_sha256(staging / MODEL_FILE)
        version = adapted_name(base, proposal, sha, now)
        thresholds = base.thresholds.model_copy(update={"urgent_melanoma": proposal.threshold})
        provenance = proposal.as_dict()
        meta = base.model_copy(update={
            "version": version, "created_at": now, "parent_version": base.version, "sha256": sha,
            "thresholds": thresholds, "training_command": command, "metrics": base.metrics | {ADAPT_KIND: provenance},
            "notes": (f"unlabelled site adaptation of {base.version} from {proposal.n_site_images} images: "
                      f"BatchNorm statistics {'re-estimated' if proposal.bn_layers else 'unchanged'}, urgent "
                      f"threshold {proposal.base_threshold:.4f} -> {proposal.threshold:.4f}"),
        })
        (staging / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
        (staging / ADAPTATION_FILE).write_text(json.dumps(provenance, indent=1, default=float))
        card = base_dir / "model_card.md"
        (staging / "model_card.md").write_text(
            _model_card(version, card.read_text() if card.is_file() else None, proposal))
        return store.add_version(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def format_proposal(p: AdaptProposal, left_out: int = 0) -> list[str]:
    before, after = p.locked["before"], p.locked["after"]

    def num(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return [
        f"base version {p.base_version}; {p.n_site_images} site images ({left_out} unreadable or unusable, left out)",
        f"BatchNorm statistics: {'re-estimated in ' + str(p.bn_layers) + ' layers' if p.bn_layers else 'unchanged'}",
        f"urgent threshold {p.base_threshold:.4f} -> {p.threshold:.4f} (shift "
        f"{'off' if p.shift_log_odds is None else f'{p.shift_log_odds:+.3f} log-odds'}, proposed "
        f"{p.shifted_threshold:.4f}, locked-set ceiling {num(p.locked_ceiling)})",
        f"site images flagged urgent: {p.site_urgent_rate['before_threshold']:.3f} -> {p.site_urgent_rate['after']:.3f}",
        f"locked set: AUC {num(before['auc'])} -> {num(after['auc'])}, sensitivity {num(before['sensitivity'])} -> "
        f"{num(after['sensitivity'])}, specificity {num(before['specificity'])} -> {num(after['specificity'])}",
        f"gate: {'passed' if p.passed else 'FAILED'}: " + "; ".join(p.gate.get("reasons", [])),
    ]
