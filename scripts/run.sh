#!/usr/bin/env bash
# Set up (idempotent) and run the node with ./config.toml (or $AINODE_CONFIG).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ainode serve "$@"
