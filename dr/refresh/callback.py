"""Index refresh: re-encode the corpus with the current weights, re-mine, swap in the new negatives.

ANCE (Xiong et al., ICLR 2021, Sec. 4) keeps hard negatives fresh with a separate inference job
that re-encodes the corpus from recent checkpoints, rebuilds a FAISS index, takes the top-200 per
training query and writes a new training file; SimANS and AR2 re-mine synchronously while
training waits. :class:`IndexRefresh` does both as a Lightning callback, a thin layer over:

- :mod:`dr.refresh.schedule`: when a refresh is due, and the backoff after failures;
- :mod:`dr.refresh.worker`: the worker process (spawn, queues, crash and timeout handling);
- :mod:`dr.refresh.job`: what one refresh does (encode, index, mine, optionally teacher-score);
- :mod:`dr.refresh.store`: the versioned, checksummed files a refresh writes;
- :mod:`dr.refresh.report`: the metrics logged per swap (kernel effective sample sizes included) and the summary.

``mode="async"``: at each schedule point the encoder is snapshotted and handed to the worker;
the trainer keeps stepping and, at a batch boundary, swaps in the newest verified version
(``datamodule.set_negatives``). It never waits. ``mode="sync"``: the same job runs in the
training process with the live encoder while the trainer waits.

Failures: a worker that raises, dies or overruns ``timeout_s`` is logged (and killed); the run
keeps training on the last good negatives and a new worker starts at a later schedule point.

Resume: the schedule, the versions (current, next, in flight) and the history are in the
checkpoint. On resume the current version's negatives are loaded again before the first batch;
versions the checkpoint had not started and orphan ``.tmp-*`` folders are deleted. A refresh in
flight at the checkpoint is kept if it completed since, else built again from its snapshot (kept
until its version is complete): the same weights and mining seed give the same negatives, so a
killed run resumes as it would have gone on. Without its snapshot it is redone at the first step.

DDP: only local rank 0 of each node snapshots and owns a worker (each node writes its own
``refresh/node<k>`` unless there is one node). All ranks take the same decisions at the same
global step, and the only collective is at poll steps (``global_step % poll_every_n_steps == 0``,
the same on every rank): there each rank reports which versions are complete on its node, and
rank 0 whether a refresh is due (a schedule point that falls between polls, by time, by steps or
a resubmission after resume, waits for the next poll). One ``all_gather`` later every rank
switches to the *highest version complete on every node*
(:func:`dr.refresh.schedule.agreed_version`: a version that failed on one node is never used,
even once a later one succeeded there) and submits the refresh rank 0 chose. Corpus encoding is
not sharded across ranks: the node's worker encodes the whole corpus. Swapping negatives needs
``data.num_workers=0``; it is checked at train start, before any refresh runs.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from dr.models.onnx import check_backend
from dr.refresh.job import RefreshJob, RefreshSetup, refresh_setup, run_job
from dr.refresh.report import log_row, summarize, swap_entry, swap_metrics
from dr.refresh.schedule import NOTHING, SKIP, SUBMIT, RefreshSchedule, agreed_version
from dr.refresh.store import (
    MANIFEST,
    NEGATIVES,
    clean_refresh_dir,
    stage_version,
    staged_job,
    teacher_file,
    verified_manifest,
    version_dir,
)
from dr.refresh.supervision import WorkerSupervision
from dr.refresh.worker import RefreshWorker

log = logging.getLogger(__name__)


class IndexRefresh(WorkerSupervision, pl.Callback):
    """Refresh the hard negatives during training (see the module docstring).

    Args:
        enabled: False makes the callback inert (``train`` does not add it then).
        mode: ``"async"`` (a worker process; the trainer never waits) or ``"sync"`` (the trainer waits).
        every_n_steps / every_minutes: the schedule (either or both).
        device: ``auto``, ``cpu`` or ``cuda`` for encoding and the FAISS index (GPU index in fp16).
        index: FAISS index kind (``flat``, ``ivf``, ``hnsw``).
        miner: a miner config (``conf/miner/*.yaml``), applied to the top ``top_k`` candidates.
        score_scale: logits per unit of similarity for the miner's kernels (SimANS's a, b, τ are
            on logits). The config's ``"auto"`` is resolved by :func:`dr.training.train` before the
            callback is built: the loss's own scale (1/temperature), else 20 for a cosine encoder
            and 1 for a dot-product one (:func:`dr.miners.candidates.resolve_score_scale`).
        top_k, batch_size, chunk_size, bf16: mining settings as in ``dr-mine``.
        worker_threads: torch and FAISS threads of the worker (CPU); trainer_threads: torch
            threads of the training process (None leaves them).
        timeout_s: a job running longer is killed and counted as a failure.
        max_backoff_schedules: the most schedules skipped after repeated failures.
        teacher: optional teacher config scoring the new pairs (:func:`dr.refresh.job.teacher_score`): into the
        negatives
            file with ``data.teacher_from_negatives`` (required there), else into the KD lists (the file keeps the
            student's).
        keep_snapshots: keep each version's encoder snapshot (by default deleted once the version is complete).
        backend: ``torch``, ``onnx`` or ``onnx-int8``: the job exports the snapshot (sync: the live encoder)
            to ONNX (int8) and encodes with onnxruntime on the CPU; ``stats.export_s`` in the manifest.
            ``auto``: the backend and precision :mod:`dr.models.auto_backend` calibrates for the student on
            this machine (once per CPU and model shape, cached), resolved at train start; torch on a GPU.
        poll_every_n_steps: how often ranks look for a new version.
        dirpath: where versions go (default ``<trainer.default_root_dir>/refresh``).
        seed: mining seed (each version draws from ``(seed, version)``).
        job_hook: Python API only: a picklable callable run as each job starts, in the worker
            (instrumentation; the tests inject crashes and stalls with it).
    """

    def __init__(
        self,
        enabled: bool = True,
        mode: str = "async",
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
        device: str = "auto",
        index: str = "flat",
        miner: dict | DictConfig | None = None,
        top_k: int = 200,
        batch_size: int = 64,
        chunk_size: int = 1024,
        bf16: bool = False,
        worker_threads: int | None = 1,
        trainer_threads: int | None = None,
        timeout_s: float = 3600.0,
        max_backoff_schedules: int = 8,
        teacher: dict | DictConfig | None = None,
        keep_snapshots: bool = False,
        backend: str = "torch",
        poll_every_n_steps: int = 1,
        dirpath: str | None = None,
        seed: int = 42,
        job_hook: Callable[[RefreshJob], None] | None = None,
        score_scale: float | str = "auto",
    ):
        if mode not in ("async", "sync"):
            raise ValueError(f"refresh.mode must be 'async' or 'sync', got {mode!r}")
        if enabled and not every_n_steps and not every_minutes:
            raise ValueError("refresh: set every_n_steps or every_minutes (or refresh=none)")
        if backend != "auto":
            check_backend(backend)
        if miner is None:
            miner = {"_target_": "dr.miners.SimANSMiner", "num_negatives": 15}
        self.enabled = enabled
        self.mode = mode
        self.device = device
        self.index = index
        self.miner = OmegaConf.to_container(miner, resolve=True) if isinstance(miner, DictConfig) else dict(miner)
        self.teacher = OmegaConf.to_container(teacher, resolve=True) if isinstance(teacher, DictConfig) else teacher
        self.top_k, self.batch_size, self.chunk_size, self.bf16 = top_k, batch_size, chunk_size, bf16
        self.worker_threads, self.trainer_threads = worker_threads, trainer_threads
        self.timeout_s = timeout_s
        self.keep_snapshots, self.poll_every_n_steps, self.backend = keep_snapshots, max(1, poll_every_n_steps), backend
        self.dirpath, self.seed, self.job_hook, self.score_scale = dirpath, seed, job_hook, score_scale
        self.schedule = RefreshSchedule(every_n_steps, every_minutes, max_backoff_schedules)
        # versions and history: saved in checkpoints (with the schedule)
        self.current_version = 0
        self.next_version = 1
        self.pending: dict[int, dict] = {}
        self.history: list[dict] = []
        self.blocked_total_s = 0.0
        # runtime only
        self._root: Path | None = None
        self._setup: RefreshSetup | None = None
        self._worker: RefreshWorker | None = None
        self._verified: dict[int, dict] = {}
        self._bad: set[int] = set()
        self._submit_blocked: dict[int, float] = {}
        self._in_flight: list[int] = []  # versions in flight at the checkpoint resumed from

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "current_version": self.current_version,
            "next_version": self.next_version,
            "pending": sorted(self.pending),
            "history": self.history,
            "blocked_total_s": self.blocked_total_s,
            **self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.current_version = int(state["current_version"])
        self.schedule.load_state_dict(state)
        self.history = list(state.get("history", []))
        self.blocked_total_s = float(state.get("blocked_total_s", 0.0))
        # Versions after the checkpoint's belong to the killed run's future: they are deleted.
        self.next_version = int(state.get("next_version", self.current_version + 1))
        self.pending = {}
        self._in_flight = [int(v) for v in state.get("pending", [])]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _local_zero(trainer: pl.Trainer) -> bool:
        return trainer.local_rank == 0

    def _root_for(self, trainer: pl.Trainer) -> Path:
        root = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "refresh"
        if trainer.num_nodes > 1:
            root = root / f"node{trainer.node_rank}"
        return root

    # ------------------------------------------------------------------ lifecycle
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        t0 = time.perf_counter()
        self._setup = refresh_setup(
            self, trainer.datamodule, pl_module.encoder
        )  # first: it refuses a bad configuration
        if self.trainer_threads:
            torch.set_num_threads(self.trainer_threads)
        self._root = self._root_for(trainer)
        self._worker = RefreshWorker(self._setup, self._root)
        if self._local_zero(trainer):
            self._root.mkdir(parents=True, exist_ok=True)
            removed = clean_refresh_dir(self._root, keep_upto=self.next_version - 1)
            if removed:
                log.info("refresh: removed %s left by an earlier run", ", ".join(sorted(removed)))
        trainer.strategy.barrier("refresh_clean")
        if self.current_version > 0:
            # Resumed: train on the checkpoint's negatives again from the first batch.
            vdir = version_dir(self._root, self.current_version)
            if verified_manifest(vdir) is None:
                raise RuntimeError(
                    f"{vdir}: the checkpoint trains on refresh version {self.current_version}, "
                    "but its manifest or negatives file is missing or corrupt"
                )
            trainer.datamodule.set_negatives(
                str(vdir / NEGATIVES), self.current_version, teacher_path=teacher_file(vdir)
            )
            log.info("refresh: resumed on negatives version %d", self.current_version)
        for version in self._in_flight:
            self._resume_version(trainer, version)
        self._in_flight = []
        self.schedule.restart_timer()
        self.blocked_total_s += time.perf_counter() - t0

    def _resume_version(self, trainer: pl.Trainer, version: int) -> None:
        """A refresh in flight at the checkpoint: complete since (used at the next poll), built again
        from its staged snapshot, or, without one, redone with the current weights at the next poll."""
        job = None if self._complete(version) else staged_job(self._root, version)
        if job is not None:
            self.pending[version] = {
                "snapshot_step": int(job["snapshot_step"]),
                "submitted": time.time(),
                "started": None,
            }
            if self._local_zero(trainer) and self.mode == "async":
                self._worker.submit(
                    RefreshJob(version, int(job["snapshot_step"]), str(version_dir(self._root, version)))
                )
                log.info(
                    "refresh: v%04d, in flight at the checkpoint, is built again from its snapshot (step %d)",
                    version,
                    job["snapshot_step"],
                )
        elif not self._complete(version):
            self._bad.add(version)
            self.schedule.due_now(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        t0 = time.perf_counter()
        step = trainer.global_step
        failures = self.schedule.failures_total
        if self._local_zero(trainer) and self.mode == "async":
            self._check_worker()
        if step % self.poll_every_n_steps == 0:  # the same steps on every rank: the only collective
            version, decision = self._agree(trainer, pl_module, self._decide(trainer))
            if version > self.current_version:
                self._swap(trainer, pl_module, version)
            if decision != NOTHING:
                self._take_schedule_point(trainer, pl_module, submit=decision == SUBMIT)
        if self.schedule.failures_total > failures:
            log_row(trainer, {"failures": self.schedule.failures_total})
        self.blocked_total_s += time.perf_counter() - t0

    def _agree(self, trainer: pl.Trainer, pl_module: pl.LightningModule, decision: int = NOTHING) -> tuple[int, int]:
        """(the highest version complete on every node, rank 0's ``decision``): one ``all_gather`` of
        ``[decision, complete flags of versions current+1 .. next-1]`` (the same length on every rank)."""
        flags = [int(self._complete(v)) for v in range(self.current_version + 1, self.next_version)]
        rows = [flags]
        if trainer.world_size > 1:
            row = torch.tensor([decision, *flags], dtype=torch.long, device=pl_module.device)
            gathered = trainer.strategy.all_gather(row).reshape(trainer.world_size, -1).tolist()
            decision, rows = int(gathered[0][0]), [r[1:] for r in gathered]
        return agreed_version(self.current_version, rows), decision

    def _decide(self, trainer: pl.Trainer) -> int:
        """Rank 0 decides whether this poll is a refresh point (time-based schedules differ
        across ranks) and whether to submit: not while one is running, not during a backoff."""
        if trainer.global_rank != 0:
            return NOTHING
        step = trainer.global_step
        backoff = self.schedule.skip_schedules > 0
        decision = self.schedule.decide(step, trainer.max_steps, busy=bool(self.pending) and self.mode == "async")
        if decision == SKIP and backoff:
            log.warning(
                "refresh: skipping the refresh at step %d (backoff after %d failures)",
                step,
                self.schedule.consecutive_failures,
            )
        elif decision == SKIP:
            log.info("refresh: v%04d still running at step %d; this refresh is skipped", min(self.pending), step)
        return decision

    def _take_schedule_point(self, trainer: pl.Trainer, pl_module: pl.LightningModule, submit: bool) -> None:
        step = trainer.global_step
        self.schedule.advance(step)
        if not submit:
            return
        version = self.next_version
        self.next_version += 1
        self.pending[version] = {"snapshot_step": step, "submitted": time.time(), "started": None}
        t0 = time.perf_counter()
        if self._local_zero(trainer):
            self._submit(trainer, pl_module, version, step)
        if self.mode == "sync":
            trainer.strategy.barrier("refresh_sync")
            self.pending.pop(version, None)
            agreed, _ = self._agree(trainer, pl_module)
            self._submit_blocked[version] = time.perf_counter() - t0
            if agreed > self.current_version:
                self._swap(trainer, pl_module, agreed)
        else:
            self._submit_blocked[version] = time.perf_counter() - t0

    def _submit(self, trainer, pl_module, version: int, step: int) -> None:
        snapshot = pl_module.encoder if self.mode == "async" else None
        vdir = stage_version(self._root, version, step, self.mode, encoder=snapshot)
        job = RefreshJob(version, step, str(vdir))
        if self.mode == "sync":
            log.info("refresh: v%04d (sync) at step %d", version, step)
            try:
                run_job(self._setup, job, encoder=pl_module.encoder)
            except Exception as e:
                self._failed(version, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
                return
            finally:
                pl_module.encoder.train()
            self.schedule.succeeded()
            return
        self._worker.submit(job)
        log.info("refresh: v%04d submitted at step %d (worker pid %d)", version, step, self._worker.process.pid)

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_worker()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop_worker()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop_worker()

    # ------------------------------------------------------------------ swapping
    def _complete(self, version: int) -> bool:
        """Whether ``version`` is complete (its manifest checks out) on this node; cached."""
        if version in self._verified:
            return True
        if version in self._bad or self._root is None or not (version_dir(self._root, version) / MANIFEST).is_file():
            return False
        manifest = verified_manifest(version_dir(self._root, version))
        if manifest is None:
            self._bad.add(version)
            return False
        self._verified[version] = manifest
        return True

    def _swap(self, trainer, pl_module, version: int) -> None:
        t0 = time.perf_counter()
        manifest = self._verified.get(version) or verified_manifest(version_dir(self._root, version))
        path = version_dir(self._root, version) / NEGATIVES
        trainer.datamodule.set_negatives(str(path), version, teacher_path=teacher_file(path.parent))
        step = trainer.global_step
        superseded = [v for v in self.pending if v <= version]
        submit_s = self._submit_blocked.pop(version, 0.0)
        for v in superseded:
            self.pending.pop(v, None)
        self.current_version = version
        entry = swap_entry(manifest, step, blocked_s=submit_s + time.perf_counter() - t0)
        self.history.append(entry)
        log_row(trainer, swap_metrics(entry, manifest.get("stats", {}), self.schedule.failures_total))
        log.info(
            "refresh: swapped in negatives v%04d at step %d (snapshot step %d, %.1f s to build, positive in top-%d: "
            "%.2f)",
            version,
            step,
            entry["snapshot_step"],
            entry["duration_s"],
            self.top_k,
            entry["positive_retrieved"],
        )

    # ------------------------------------------------------------------ reporting
    def summary(self, train_seconds: float | None = None) -> dict[str, float]:
        """Flat metrics for metrics.json (:func:`dr.refresh.report.summarize`)."""
        return summarize(
            self.history, self.current_version, self.schedule.failures_total, self.blocked_total_s, train_seconds
        )
