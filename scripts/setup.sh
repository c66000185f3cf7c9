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
# jemalloc, the allocator dr's commands run under when it is there (dr/allocator.py: less memory and
# faster CPU steps than glibc's malloc). Debian's libjemalloc2 is unpacked into the venv: no root,
# nothing installed system-wide. Without apt (or its package lists) the system's malloc is used.
JEMALLOC="$VENV/lib/jemalloc/libjemalloc.so.2"
if [ ! -f "$JEMALLOC" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && apt-get download libjemalloc2 >/dev/null 2>&1) && dpkg-deb -x "$tmp"/libjemalloc2_*.deb "$tmp/x"; then
        lib=$(find "$tmp/x" -name 'libjemalloc.so.2' | head -n 1)
        if [ -n "$lib" ]; then
            mkdir -p "$(dirname "$JEMALLOC")"
            cp -L "$lib" "$JEMALLOC.tmp" && mv "$JEMALLOC.tmp" "$JEMALLOC"
        fi
    fi
    rm -rf "$tmp"
fi
[ -f "$JEMALLOC" ] || echo "note: no jemalloc in $VENV (apt-get download libjemalloc2 failed); dr runs on the system's malloc"
echo "dr installed in $VENV ($("$PY" -c 'import torch, transformers, faiss, pytorch_lightning as pl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, faiss {faiss.__version__}, lightning {pl.__version__}")'))"
