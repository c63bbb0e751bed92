#!/usr/bin/env bash
# The issue 22 GPU check in one command, for an H100/H200 box (at most 8 minutes):
#   bash bench/gpu_check.sh [--out DIR] [--budget-s SECONDS] [--cpu-tiny]
# Prints `graph_breaks: N` and the bench table, writes DIR/gpu_check.json and DIR/gpu_check.md
# (default DIR: ./gpu_check_out). Without CUDA it runs the tiny model on the CPU (the CI form).
# Needs the package installed (pip install -e . from the repository root) with torch for the GPU.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
