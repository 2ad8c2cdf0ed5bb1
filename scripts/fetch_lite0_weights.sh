#!/usr/bin/env bash
# EfficientNet-Lite0 ImageNet weights for `melanoma-triage train --backbone lite0`
# (kept for the commands in the READMEs; scripts/fetch_lite_weights.sh does the work and
# also fetches lite1 and lite2).
set -euo pipefail
exec "$(dirname "$0")/fetch_lite_weights.sh" lite0
