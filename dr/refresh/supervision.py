"""Supervision of the refresh worker process, mixed into :class:`dr.refresh.IndexRefresh`: drain its
messages, and turn a crash, a reported failure or a timeout into a failed version (marked on disk
and in the history; training goes on with the current negatives and the schedule backs off).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dr.refresh.schedule import RefreshSchedule
from dr.refresh.store import mark_failed
from dr.refresh.worker import RefreshWorker

log = logging.getLogger("dr.refresh.callback")  # the callback's log, where users look for refresh events


class WorkerSupervision:
    """The worker side of :class:`dr.refresh.IndexRefresh` (its state lives on the callback)."""

    _worker: RefreshWorker | None
    _root: Path | None
    _bad: set[int]
    pending: dict[int, dict]
    history: list[dict]
    schedule: RefreshSchedule
    current_version: int
    timeout_s: float

    def _check_worker(self) -> None:
        """Drain the worker's messages; detect a crash or a timeout."""
        if self._worker is None:
            return
        for kind, version, payload in self._worker.messages():
            if kind == "started" and version in self.pending:
                self.pending[version]["started"] = time.time()
            elif kind == "done":  # the manifest is checked on disk when the version is polled
                self.pending.pop(version, None)
                self.schedule.succeeded()
            elif kind == "failed":
                self._failed(version, payload)
                self._worker.stop()  # it exits after reporting; a new one starts at the next refresh
                break
        if not self.pending:
            return
        if not self._worker.alive:
            code = self._worker.exitcode
            for version in sorted(self.pending):
                self._failed(version, f"the worker died (exit code {code}) without a result")
            self._worker.stop()
            return
        oldest = min(self.pending)
        started = self.pending[oldest]["started"] or self.pending[oldest]["submitted"]
        if time.time() - started > self.timeout_s:
            for version in sorted(self.pending):
                self._failed(version, f"timed out after {self.timeout_s:.0f} s; the worker was killed")
            self._worker.stop()

    def _failed(self, version: int, error: str) -> None:
        self.pending.pop(version, None)
        self._bad.add(version)
        self.schedule.failed()
        log.error(
            "refresh v%04d failed; training goes on with negatives version %d (%d failure(s) in a row, "
            "next %d schedule(s) skipped):\n%s",
            version,
            self.current_version,
            self.schedule.consecutive_failures,
            self.schedule.skip_schedules,
            error,
        )
        if self._root is not None:
            mark_failed(self._root, version, error)
        self.history.append({"version": version, "status": "failed"})

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
