#!/usr/bin/env bash
# Create .venv and install melanoma-triage with every extra and the test deps, at the exact
# versions of constraints.txt (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[serve,train,test,flower,bench]"
# pdftotext/pdfinfo read the reports in the tests, dcmdump is an independent DICOM parser
# for the fixtures, dciodvfy (dicom3tools) validates the DICOM objects we write, DejaVu
# renders non-Latin patient names, chromium runs the workspace's browser tests (Playwright
# drives Debian's build; `playwright install` is never run).
if ! command -v pdftotext >/dev/null 2>&1 || ! command -v dcmdump >/dev/null 2>&1 \
   || ! command -v dciodvfy >/dev/null 2>&1 || [ ! -d /usr/share/fonts/truetype/dejavu ] \
   || [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq poppler-utils dcmtk dicom3tools fonts-dejavu-core chromium >/dev/null
  else
    echo "please install poppler-utils, dcmtk, dicom3tools, fonts-dejavu-core and chromium" >&2
  fi
fi
