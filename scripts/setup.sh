#!/usr/bin/env bash
# Set up ainode on a fresh Debian/Ubuntu machine: system tools and a virtualenv.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    also the test and lint tools
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

group=""
[[ "${1:-}" == "--dev" ]] && group="dev"

# dcmtk: storescu/echoscu/storescp (tests, benchmarks, sending studies);
# dicom3tools: dciodvfy/dcentvfy (validating every object the node writes);
# orthanc (--dev only): the PACS that receives results in the end-to-end tests;
# postgresql (--dev only): the database server the storage tests also run on;
# systemd, openssl, chromium (--dev only): systemd-analyze verifies
# deploy/ainode.service, openssl makes test certificates, headless Chromium reads
# the dashboard.
# libdcmtk-dev, g++: node/native/_dcmnet, the receive path on dcmtk's libdcmnet
# ([node] receiver = "dcmtk", the default), built by the pip install below.
need=()
command -v storescu >/dev/null || need+=(dcmtk)
[[ -e /usr/include/dcmtk/dcmnet/assoc.h ]] || need+=(libdcmtk-dev)
command -v g++ >/dev/null || need+=(g++)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
if [[ -n "$group" ]]; then
  command -v Orthanc >/dev/null || need+=(orthanc)
  command -v systemd-analyze >/dev/null || need+=(systemd)  # checks deploy/ainode.service
  command -v openssl >/dev/null || need+=(openssl)  # makes the TLS tests' certificates
  command -v chromium >/dev/null || need+=(chromium)  # reads the dashboard as a person would
  # PostgreSQL: the tests start their own server (initdb/pg_ctl in a temp folder).
  command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || need+=(postgresql)
fi
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  # All at once first; apt sometimes answers "held broken packages" for a set
  # that installs fine one package at a time.
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null; then
    for package in "${need[@]}"; do
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >/dev/null
    done
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# pip >= 25.1 reads [dependency-groups] from pyproject.toml.
.venv/bin/python -m pip install -q --upgrade "pip>=25.1"
# torch first, pinned: on these machines torch==2.13.0 is a CPU build lying on disk,
# while an unpinned torch would pull a multi-GB CUDA build. With a GPU, install the
# CUDA build of torch (2.4 to 2.14) into .venv yourself; setup keeps what is there.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
if [[ -n "$group" ]]; then
  .venv/bin/python -m pip install -q -e . --group "$group"
else
  .venv/bin/python -m pip install -q -e .
fi
# The default receive path ([node] receiver = "dcmtk") is the compiled module: an install
# without it would start no node, so setup says so here, with the fix.
if ! .venv/bin/python -c "import node.native._dcmnet" 2>/dev/null; then
  echo "setup: node/native/_dcmnet did not build (needs Debian's libdcmtk-dev and g++);" \
    "install them and run setup again, or set [node] receiver = \"pynetdicom\"" >&2
  exit 1
fi
echo "setup: ready (.venv/bin/ainode)" >&2
