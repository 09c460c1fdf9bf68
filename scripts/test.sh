#!/usr/bin/env bash
# Set up (idempotent) and run every check: ruff, mypy, pytest. The same script runs in CI.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export TCP_NODELAY=1   # dcmtk tools: no 40 ms Nagle stall per C-STORE round trip
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
