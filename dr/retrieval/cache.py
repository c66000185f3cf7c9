"""A cache of run files keyed by everything that decides them: the encoder's weights and settings,
the corpus and queries files, the depth and the precision.

``dr-train`` evaluates the untrained encoder before training (the zero-shot row of its table);
every run of the same recipe would otherwise re-encode the same corpus with the same weights.
A cached run is reused only when its key matches: changing a weight, a length, the pooling, the
corpus or the queries file (its size or modification time), ``k`` or bf16 gives another key.
Files are written atomically, so a killed run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from dr.data.corpus import IRDS_PREFIX, resolve_path
from dr.data.io import write_json
from dr.data.trec import read_run, write_run

log = logging.getLogger(__name__)


def file_stamp(spec: str) -> list:
    """What identifies a version of a data file: its path, size and modification time
    (an ``irds:`` id is its own version)."""
    path = resolve_path(spec)
    if path.startswith(IRDS_PREFIX):
        return [path]
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def encoder_fingerprint(encoder) -> str:
    """sha1 over every weight (name, dtype, shape, bytes) and the encoder's settings."""
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(encoder.config_dict(), sort_keys=True).encode())
    return digest.hexdigest()


class RunCache:
    """Run files under ``root/<key>.run`` with a ``<key>.json`` that says what the key covers."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    @staticmethod
    def key(**parts) -> tuple[str, dict]:
        described = json.loads(json.dumps(parts, sort_keys=True, default=str))
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32], described

    def get_or_compute(self, compute: Callable[[], dict], **parts) -> tuple[dict[str, dict[str, float]], bool]:
        """The cached run for ``parts``, or ``compute()``'s (then stored); and whether it was a hit."""
        key, described = self.key(**parts)
        path = self.root / f"{key}.run"
        if path.is_file():
            log.info("reusing the cached run %s", path)
            return read_run(path), True
        run = compute()
        write_run(run, path, tag="cached")
        write_json(self.root / f"{key}.json", described)
        return run, False


def cached_dense_run(
    cache_dir: str | os.PathLike,
    compute: Callable[[], dict],
    fingerprint: str,
    corpus: str,
    queries: str,
    qids,
    k: int,
    backend: str,
) -> tuple[dict[str, dict[str, float]], bool]:
    """The dense run of the encoder whose :func:`encoder_fingerprint` is ``fingerprint`` over
    ``corpus`` for ``queries`` (the ids ``qids`` of that file) at depth ``k`` and precision
    ``backend``, from ``cache_dir`` or ``compute()``; and whether it was a hit. The one key of a
    cached dense run: the test split's zero-shot row and an out-of-domain set's share it."""
    return RunCache(cache_dir).get_or_compute(
        compute,
        kind="dense_run",
        encoder=fingerprint,
        corpus=file_stamp(corpus),
        queries=file_stamp(queries),
        qids=sorted(qids),
        k=int(k),
        backend=backend,
    )
