"""The refresh job: what the worker process (or, in sync mode, the trainer) runs for one version.

Load the snapshot (with ``backend=onnx|onnx-int8``, export it to ONNX and quantise it, inside
the job: the time is in the manifest's ``stats.export_s``), encode the corpus and the training
queries, build a FAISS index (GPU, fp16 vectors, when there is one), mine with the configured
miner chain (:mod:`miners`, through :func:`dr.miners.candidates.mine_queries`), optionally have a
teacher re-score the new pairs, and write the version (:mod:`dr.refresh.store`), manifest last.
Free of Lightning imports, so a freshly spawned worker starts in seconds.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dr.data.io import write_json
from dr.refresh.store import NEGATIVES, SNAPSHOT, STATS, TEACHER_NEGATIVES, write_manifest

log = logging.getLogger(__name__)


@dataclass
class RefreshJob:
    """One refresh: the version to write, the step its snapshot was taken at, its folder."""

    version: int
    snapshot_step: int
    version_dir: str
    extra: dict = field(default_factory=dict)


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
    # where the teacher's scores go: into the negatives file (data.teacher_from_negatives=true), or into a
    # file of their own (TEACHER_NEGATIVES) for the KD lists, the negatives file keeping the student's scores
    teacher_into_negatives: bool = True
    keep_snapshots: bool = False
    backend: str = "torch"  # torch | onnx | onnx-int8: what encodes the corpus and queries
    # logits per unit of similarity, for the miner's kernels (dr.miners.candidates.resolve_score_scale)
    score_scale: float = 1.0
    # called as each job starts (instrumentation, fault injection in tests)
    job_hook: Callable[[RefreshJob], None] | None = None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    assert device in ("cpu", "cuda"), f"refresh.device={device!r} (dr.validate checks it)"
    return device


def resolve_backend(encoder, backend: str, bf16: bool, device: str) -> tuple[str, bool]:
    """``(backend, bf16)`` of the refresh encodings: as configured, or for ``backend=auto`` the
    choice :mod:`dr.models.auto_backend` calibrates for the student (in eval mode, put back after;
    cached per machine and model shape); torch on a GPU."""
    if backend != "auto":
        return backend, bf16
    if resolve_device(device) == "cuda":
        return "torch", bf16
    from dr.models.auto_backend import choose_and_log

    was_training = encoder.training
    encoder.eval()
    try:
        choice = choose_and_log(encoder, None, log, prefix="refresh ")
    finally:
        encoder.train(was_training)
    return choice.backend, choice.bf16


def refresh_setup(refresh, dm, encoder) -> RefreshSetup:
    """What every job of ``refresh``'s run shares (an :class:`dr.refresh.IndexRefresh`), from the
    datamodule's training queries and the student ``encoder`` (``backend=auto`` resolved for it)."""
    if dm is None or not hasattr(dm, "set_negatives"):
        raise RuntimeError("IndexRefresh needs a datamodule with set_negatives (dr.training.RetrievalDataModule)")
    # The config was checked by dr.validate (teacher scores, loader workers) before any work;
    # a Trainer built by hand without it gets a plain error, as for any other misuse.
    if dm.hparams.get("teacher_from_negatives") and not refresh.teacher:
        raise RuntimeError(
            "IndexRefresh: data.teacher_from_negatives=true needs refresh.teacher "
            "(dr.validate.validate_config refuses this config)"
        )
    if dm.hparams.get("num_workers", 0) > 0:  # loader workers hold their own copies of the negatives
        raise RuntimeError("IndexRefresh: data.num_workers must be 0 (dr.validate.validate_config refuses this config)")
    scale = refresh.score_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise RuntimeError(
            f"IndexRefresh(score_scale={refresh.score_scale!r}): expected a positive number, "
            "resolved once by dr.training.train (dr.miners.candidates.resolve_score_scale)"
        )
    ds = dm.train_dataset
    score_scale = float(refresh.score_scale)
    backend, bf16 = resolve_backend(encoder, refresh.backend, refresh.bf16, refresh.device)
    return RefreshSetup(
        corpus=str(dm.hparams.corpus),
        qids=list(ds.qids),
        queries=dict(zip(ds.qids, ds.query_texts)),
        positives={q: list(ds.positives[q]) for q in ds.qids},
        miner=refresh.miner,
        index=refresh.index,
        device=refresh.device,
        top_k=refresh.top_k,
        batch_size=refresh.batch_size,
        chunk_size=refresh.chunk_size,
        bf16=bf16,
        seed=refresh.seed,
        worker_threads=refresh.worker_threads,
        teacher=refresh.teacher,
        teacher_into_negatives=bool(dm.hparams.get("teacher_from_negatives")),
        keep_snapshots=refresh.keep_snapshots,
        job_hook=refresh.job_hook,
        backend=backend,
        score_scale=score_scale,
    )


def run_job(setup: RefreshSetup, job: RefreshJob, encoder=None, corpus=None, teacher=None) -> dict:
    """Encode, index, mine (and optionally teacher-score), write the version; returns its manifest.

    ``encoder`` is the live model in sync mode; otherwise the snapshot in ``job.version_dir`` is
    loaded. ``teacher``: the run's teacher kept across jobs (the worker's; its caches, e.g. the
    fusion teacher's passage embeddings, survive), else made from ``setup.teacher``. The manifest
    is written last, so a version without one is incomplete.
    """
    from dr.data import passage_texts, read_corpus, write_negatives
    from dr.models import BiEncoder, onnx_encoder
    from dr.retrieval import DenseIndex, encode_corpus, gpu_available
    from dr.miners.candidates import dense_candidates, instantiate_miner, mine_queries, with_teacher_scores

    t0 = time.perf_counter()
    vdir = Path(job.version_dir)
    if setup.job_hook is not None:
        setup.job_hook(job)
    device = resolve_device(setup.device)
    if encoder is None:
        snapshot = vdir / SNAPSHOT
        encoder = BiEncoder.from_pretrained(str(snapshot)).to(device).eval()
    export_s = None
    if setup.backend != "torch":  # the live encoder (sync) is traced in eval mode and given back as it was
        t_export = time.perf_counter()
        encoder = onnx_encoder(encoder, int8=setup.backend == "onnx-int8")
        export_s = time.perf_counter() - t_export
    corpus = corpus if corpus is not None else read_corpus(setup.corpus)
    docids = list(corpus["docid"])
    embeddings = encode_corpus(encoder, corpus, batch_size=setup.batch_size, bf16=setup.bf16, show_progress=False)
    use_gpu = device == "cuda" and gpu_available() and setup.index != "hnsw"
    index = DenseIndex.build(embeddings, docids, kind=setup.index, use_gpu=use_gpu, gpu_fp16=True)
    miner = instantiate_miner(setup.miner, docids, score_scale=setup.score_scale)
    row_of = {d: i for i, d in enumerate(docids)}
    candidates = dense_candidates(
        encoder, index, embeddings, row_of, setup.queries, setup.positives, setup.top_k, setup.batch_size, setup.bf16
    )
    passage_text = lambda d: passage_texts(corpus, [row_of[d]])[0]  # noqa: E731
    if teacher is None and setup.teacher:
        teacher = make_teacher(setup.teacher, setup.corpus)
    if teacher is not None and miner.needs_teacher_scores:  # RocketQA's denoising filters on the teacher's scores
        miner.bind_teacher(teacher)
        candidates = with_teacher_scores(candidates, teacher, setup.queries, passage_text, setup.positives)
    rng = np.random.default_rng([setup.seed, job.version])
    records, stats = mine_queries(
        setup.qids, setup.positives, candidates, miner, rng, setup.chunk_size, show_progress=False
    )
    stats["backend"] = setup.backend
    if export_s is not None:
        stats["export_s"] = export_s
    if teacher is not None and setup.teacher_into_negatives:
        records = teacher_score(teacher, records, setup.queries, passage_text)
    elif teacher is not None:  # the KD lists get the teacher's scores; SimANS keeps reading the student's
        write_negatives(
            vdir / TEACHER_NEGATIVES, teacher_score(teacher, copy.deepcopy(records), setup.queries, passage_text)
        )
    if teacher is not None:
        stats["teacher_scored"] = True
    write_negatives(vdir / NEGATIVES, records)
    write_json(vdir / STATS, stats)
    manifest = write_manifest(
        vdir,
        {
            "version": job.version,
            "snapshot_step": job.snapshot_step,
            "queries": len(records),
            "negatives_total": sum(len(r.negatives) for r in records),
            "duration_s": time.perf_counter() - t0,
            "device": device,
            "index": setup.index,
            "stats": stats,
        },
    )
    if not setup.keep_snapshots:  # kept until the version is complete: a run killed before can build it again from it
        shutil.rmtree(vdir / SNAPSHOT, ignore_errors=True)
    return manifest


def make_teacher(teacher_cfg: dict, corpus: str):
    """The refresh teacher from its Hydra node (any object with ``score_groups``, e.g. :mod:`dr.teachers`).

    A teacher with corpus statistics (the fusion teacher's BM25) is given the run's ``corpus``, as
    ``dr-score`` and ``dr-mine`` give theirs: ``conf/teacher/fusion.yaml`` names SciFact's.
    """
    import hydra

    extra = {"corpus": corpus} if "corpus" in teacher_cfg else {}
    return hydra.utils.instantiate(teacher_cfg, **extra)


def teacher_score(teacher, records, queries: dict[str, str], passage_text) -> list:
    """Optional hook: a teacher re-scores every (query, positive/negative) pair of the new file.

    ``teacher`` has ``score_groups(queries, passages_per_query) -> [scores per query]`` (the
    teachers of :mod:`dr.teachers`, :func:`make_teacher`). The scores replace the dense scores in
    the negatives file; train with ``data.teacher_from_negatives=true`` to use them.
    """
    groups = [list(r.positives) + list(r.negatives) for r in records]
    scores = teacher.score_groups([queries[r.qid] for r in records], [[passage_text(d) for d in g] for g in groups])
    for r, s in zip(records, scores):
        s = [float(x) for x in s]
        r.positive_scores, r.negative_scores = s[: len(r.positives)], s[len(r.positives) :]
    return records
