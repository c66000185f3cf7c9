"""The refresh worker: a spawned process that runs refresh jobs one at a time.

The trainer talks to it through two queues: jobs in, ``("started" | "done" | "failed", version,
payload)`` messages out. A job that raises crashes the worker after reporting; the callback starts
a new one at a later refresh. The worker asks the kernel to kill it when the trainer dies
(``PR_SET_PDEATHSIG``) and also exits when it sees it has been orphaned, so a killed run leaves no
orphan. Its torch/FAISS threads are capped (``worker_threads``) and ``TOKENIZERS_PARALLELISM`` is
off, so it does not fight the trainer for cores.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from pathlib import Path

import torch

from dr.data.io import write_json
from dr.refresh.job import RefreshJob, RefreshSetup
from dr.refresh.store import WORKER_PID

log = logging.getLogger(__name__)


class RefreshWorker:
    """The life cycle of one worker process (start, submit, drain messages, stop)."""

    def __init__(self, setup: RefreshSetup, root: str | os.PathLike):
        self.setup = setup
        self.root = Path(root)
        self.process = None
        self._jobs = self._results = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def start(self) -> None:
        """Start a worker unless one is running (spawned, with the worker's thread budget)."""
        if self.alive:
            return
        ctx = mp.get_context("spawn")
        self._jobs, self._results = ctx.Queue(), ctx.Queue()
        threads = str(self.setup.worker_threads) if self.setup.worker_threads else None
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
        saved = {k: os.environ.get(k) for k in env}
        try:
            for k, v in env.items():
                if v is not None:
                    os.environ[k] = v
            self.process = ctx.Process(
                target=_worker_main,
                args=(self.setup, self._jobs, self._results, os.getpid()),
                name="dr-refresh-worker",
                daemon=True,
            )
            self.process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        write_json(self.root / WORKER_PID, {"pid": self.process.pid})
        log.info("refresh: started worker pid %d", self.process.pid)

    def submit(self, job: RefreshJob) -> None:
        self.start()
        self._jobs.put(job)

    def messages(self) -> list[tuple]:
        """The worker's messages so far, oldest first."""
        out = []
        while self._results is not None:
            try:
                out.append(self._results.get_nowait())
            except (queue.Empty, OSError, ValueError, EOFError):
                break
        return out

    def stop(self) -> None:
        """Ask the worker to exit; terminate, then kill it if it does not."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.is_alive():
            with contextlib.suppress(Exception):
                self._jobs.put(None)
            process.join(timeout=2)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
        for q in (self._jobs, self._results):
            with contextlib.suppress(Exception):
                q.cancel_join_thread()
                q.close()
        self._jobs = self._results = None


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
    from dr.refresh.job import make_teacher, run_job

    corpus = read_corpus(setup.corpus)
    teacher = make_teacher(setup.teacher, setup.corpus) if setup.teacher else None  # kept: its caches serve every job
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
            manifest = run_job(setup, job, corpus=corpus, teacher=teacher)
        except BaseException:
            results.put(("failed", job.version, traceback.format_exc()))
            raise
        results.put(("done", job.version, manifest))
