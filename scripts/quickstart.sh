#!/usr/bin/env bash
# Command 1: set up, then run the main job on SciFact, offline (dr-pipeline, conf/pipeline/scifact.yaml):
#   stage 1: all-MiniLM-L6-v2 trained with InfoNCE and BM25 negatives (`dr-train experiment=baseline` alone);
#   stage 2: the seed recipe: SimANS negatives from the zero-shot model's top-200 pool, asynchronous
#            index refresh, InfoNCE + listwise KD from a BM25 + stage-1 fusion teacher;
# then BM25, zero-shot, stage 1, the fusion teacher and stage 2 on the SciFact test split (with its
# interpolation/extrapolation halves) and on the TREC-DL 2019 judged pool, dr-compare's verdict of
# stage 2 against stage 1, both training curves, and the export of stage 2. Stages are cached
# (outputs/pipeline-cache): a second run, or `seed=1`, reuses what is done; `--dry-run` lists them.
# Extra arguments are Hydra overrides for dr-pipeline, e.g. `bash scripts/quickstart.sh seed=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${VENV:-.venv}/bin/dr-pipeline" "$@"
