"""Asynchronous index refresh: hard negatives re-mined from the current weights during training.

:class:`IndexRefresh` (the Lightning callback, :mod:`.callback`) glues together the schedule
(:mod:`.schedule`), the worker process (:mod:`.worker`), the job it runs (:mod:`.job`), the
versioned files it writes (:mod:`.store`) and what it reports (:mod:`.report`).
"""

from dr.refresh.callback import IndexRefresh
from dr.refresh.job import RefreshJob, RefreshSetup, run_job, teacher_score
from dr.refresh.report import summarize, swap_metrics
from dr.refresh.schedule import RefreshSchedule
from dr.refresh.store import (
    FAILED,
    JOB,
    MANIFEST,
    NEGATIVES,
    SNAPSHOT,
    STATS,
    TMP_PREFIX,
    WORKER_PID,
    clean_refresh_dir,
    list_versions,
    sha256_file,
    verified_manifest,
    version_dir,
)
from dr.refresh.worker import RefreshWorker

__all__ = [
    "FAILED",
    "JOB",
    "MANIFEST",
    "NEGATIVES",
    "SNAPSHOT",
    "STATS",
    "TMP_PREFIX",
    "WORKER_PID",
    "IndexRefresh",
    "RefreshJob",
    "RefreshSchedule",
    "RefreshSetup",
    "RefreshWorker",
    "clean_refresh_dir",
    "list_versions",
    "run_job",
    "sha256_file",
    "summarize",
    "swap_metrics",
    "teacher_score",
    "verified_manifest",
    "version_dir",
]
