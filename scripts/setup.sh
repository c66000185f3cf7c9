#!/usr/bin/env bash
# Create the virtual environment (.venv, or $VENV) and install dr into it.
# torch==2.13.0 goes first: it is the local CPU wheel, and an unpinned torch would pull a CUDA
# build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
"$PY" -m pip install --quiet "torch==2.13.0"
# dr.conf is mapped from conf/, so setuptools installs in editable mode through an import finder
# and says so with an information-only notice ("Editable installation."); it is not a problem.
PYTHONWARNINGS="ignore:Editable installation" "$PY" -m pip install --quiet -e ".[test]"
echo "dr installed in $VENV ($("$PY" -c 'import torch, transformers, faiss, pytorch_lightning as pl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, faiss {faiss.__version__}, lightning {pl.__version__}")'))"
