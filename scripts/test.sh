#!/usr/bin/env bash
# Command 2: set up, lint (ruff), then run the default test suite (about 14 minutes on 2 cores).
# `bash scripts/test.sh -m slow` runs the slow tests instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# lint and format check first (ruff, configured in pyproject.toml): seconds, and a failure names the file
"${VENV:-.venv}/bin/ruff" check .
"${VENV:-.venv}/bin/ruff" format --check .
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
