#!/usr/bin/env bash
# README's test command: set up, then run the whole suite (unit + integration against the
# real PostgreSQL and Redis on 127.0.0.1; they must be running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
