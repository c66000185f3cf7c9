#!/usr/bin/env bash
# Command 1: set up, then train all-MiniLM-L6-v2 on SciFact offline, evaluate it on the SciFact
# test split before and after training (with BM25 for reference), export it and print a table.
# Extra arguments are Hydra overrides for dr-train, e.g. `bash scripts/quickstart.sh seed=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${VENV:-.venv}/bin/dr-train" "$@"
