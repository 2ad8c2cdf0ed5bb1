#!/usr/bin/env bash
# README's main command: set up, then run the service on embedded defaults
# (SQLite + filesystem broker under ./triage-data, or $TRIAGE_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/melanoma-triage run "$@"
