"""The index-refresh job: what the refresh worker process (or, in sync mode, the trainer) runs.

Kept apart from :mod:`dr.refresh` (the Lightning callback) and free of Lightning imports, so a
freshly spawned worker starts in seconds. See :mod:`dr.refresh` for the design and file layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dr.io import write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
NEGATIVES = "negatives.jsonl"
STATS = "stats.json"
SNAPSHOT = "encoder"
JOB = "job.json"
FAILED = "FAILED"
TMP_PREFIX = ".tmp-"
WORKER_PID = "worker.pid"


# ---------------------------------------------------------------------- files
def version_dir(root: str | os.PathLike, version: int) -> Path:
    return Path(root) / f"v{version:04d}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_manifest(vdir: str | os.PathLike) -> dict | None:
    """The manifest of a complete version, or None when it is absent, unreadable, failed or does
    not match its negatives file (size and sha256): a partial or corrupt version is never read."""
    vdir = Path(vdir)
    path = vdir / MANIFEST
    if not path.is_file() or (vdir / FAILED).exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        negatives = vdir / manifest["negatives"]
        if negatives.stat().st_size != manifest["bytes"] or sha256_file(negatives) != manifest["sha256"]:
            log.error("refresh %s: %s does not match its manifest; ignoring this version", vdir.name, negatives)
            return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("refresh %s: unreadable manifest (%s); ignoring this version", vdir.name, e)
        return None
    return manifest


def list_versions(root: str | os.PathLike) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit():
            out.append(int(p.name[1:]))
    return sorted(out)


def clean_refresh_dir(root: str | os.PathLike, keep_upto: int) -> list[str]:
    """Delete orphan ``.tmp-*`` folders and versions newer than ``keep_upto``; returns what went."""
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        stale = p.name.startswith(TMP_PREFIX) or (p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit() and int(p.name[1:]) > keep_upto)
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


# ---------------------------------------------------------------------- the job (worker or in-process)
@dataclass
class RefreshSetup:
    """What every job of a run shares (sent once to the worker)."""

    corpus: str
    qids: list[str]
    queries: dict[str, str]
    positives: dict[str, list[str]]
    miner: dict
    index: str = "flat"
    device: str = "auto"
    top_k: int = 200
    batch_size: int = 64
    chunk_size: int = 1024
    bf16: bool = False
    seed: int = 42
    worker_threads: int | None = 1
    teacher: dict | None = None
    keep_snapshots: bool = False


@dataclass
class RefreshJob:
    version: int
    snapshot_step: int
    version_dir: str
    fail: bool = False     # diagnostic: raise inside the job (refresh.fail_versions)
    sleep_s: float = 0.0   # diagnostic: stall the job (refresh.sleep_versions)
    extra: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"refresh.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


def run_job(setup: RefreshSetup, job: RefreshJob, encoder=None, corpus=None) -> dict:
    """Encode, index, mine (and optionally teacher-score), write the version; returns its manifest.

    ``encoder`` is the live model in sync mode; otherwise the snapshot in ``job.version_dir`` is
    loaded. The manifest is written last, so a version without one is incomplete.
    """
    import hydra

    from dr.data import passage_texts, read_corpus
    from dr.encoder import BiEncoder
    from dr.index import DenseIndex, gpu_available
    from dr.mine import dense_candidates, mine_queries
    from dr.negatives import write_negatives
    from dr.search import encode_corpus

    t0 = time.perf_counter()
    vdir = Path(job.version_dir)
    if job.sleep_s:
        time.sleep(job.sleep_s)
    device = resolve_device(setup.device)
    if encoder is None:
        snapshot = vdir / SNAPSHOT
        encoder = BiEncoder.from_pretrained(str(snapshot)).to(device).eval()
        if not setup.keep_snapshots:
            shutil.rmtree(snapshot, ignore_errors=True)
    corpus = corpus if corpus is not None else read_corpus(setup.corpus)
    docids = list(corpus["docid"])
    embeddings = encode_corpus(encoder, corpus, batch_size=setup.batch_size, bf16=setup.bf16, show_progress=False)
    if job.fail:
        raise RuntimeError(f"refresh v{job.version:04d}: injected failure (refresh.fail_versions, a diagnostic knob)")
    use_gpu = device == "cuda" and gpu_available() and setup.index != "hnsw"
    index = DenseIndex.build(embeddings, docids, kind=setup.index, use_gpu=use_gpu, gpu_fp16=True)
    miner = hydra.utils.instantiate(setup.miner)
    if getattr(miner, "corpus", False) is None:
        miner.corpus = np.asarray(docids)
    row_of = {d: i for i, d in enumerate(docids)}
    candidates = dense_candidates(encoder, index, embeddings, row_of, setup.queries, setup.positives, setup.top_k, setup.batch_size, setup.bf16)
    rng = np.random.default_rng([setup.seed, job.version])
    records, stats = mine_queries(setup.qids, setup.positives, candidates, miner, rng, setup.chunk_size, show_progress=False)
    if setup.teacher:
        records = teacher_score(setup.teacher, records, setup.queries, lambda d: passage_texts(corpus, [row_of[d]])[0])
        stats["teacher_scored"] = True
    write_negatives(vdir / NEGATIVES, records)
    write_json(vdir / STATS, stats)
    negatives = vdir / NEGATIVES
    manifest = {
        "version": job.version,
        "snapshot_step": job.snapshot_step,
        "negatives": NEGATIVES,
        "sha256": sha256_file(negatives),
        "bytes": negatives.stat().st_size,
        "queries": len(records),
        "negatives_total": sum(len(r.negatives) for r in records),
        "duration_s": time.perf_counter() - t0,
        "device": device,
        "index": setup.index,
        "stats": stats,
    }
    write_json(vdir / MANIFEST, manifest)
    return manifest


def teacher_score(teacher_cfg: dict, records, queries: dict[str, str], passage_text) -> list:
    """Optional hook: a teacher re-scores every (query, positive/negative) pair of the new file.

    ``teacher_cfg`` is a Hydra node of any object with ``score_groups(queries, passages_per_query)
    -> [scores per query]`` (the teachers of :mod:`dr.teachers`). The scores replace the dense
    scores in the negatives file; train with ``data.teacher_from_negatives=true`` to use them.
    """
    import hydra

    teacher = hydra.utils.instantiate(teacher_cfg)
    groups = [list(r.positives) + list(r.negatives) for r in records]
    scores = teacher.score_groups([queries[r.qid] for r in records], [[passage_text(d) for d in g] for g in groups])
    for r, s in zip(records, scores):
        s = [float(x) for x in s]
        r.positive_scores, r.negative_scores = s[: len(r.positives)], s[len(r.positives):]
    return records


def _exit_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the trainer dies, so a killed run leaves no orphan."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)


def _worker_main(setup: RefreshSetup, jobs, results, parent_pid: int) -> None:
    """The worker process: one job at a time; a job that raises crashes the process (after
    reporting), and the trainer starts a new worker later."""
    _exit_with_parent(parent_pid)
    import faiss

    if setup.worker_threads:
        torch.set_num_threads(setup.worker_threads)
        faiss.omp_set_num_threads(setup.worker_threads)
    from dr.data import read_corpus

    corpus = read_corpus(setup.corpus)
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if job is None:
            return
        results.put(("started", job.version, time.time()))
        try:
            manifest = run_job(setup, job, corpus=corpus)
        except BaseException:
            results.put(("failed", job.version, traceback.format_exc()))
            raise
        results.put(("done", job.version, manifest))
