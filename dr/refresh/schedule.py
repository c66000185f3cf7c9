"""When to refresh: the schedule and the backoff after failures, as pure state (no Trainer needed).

A refresh is due every ``every_n_steps`` steps, or ``every_minutes`` minutes, or both. After k
failures in a row, ``2^(k-1) - 1`` schedules are skipped (at most ``max_backoff_schedules``), so a
refresh that keeps failing costs less and less. The clock is injectable, so tests drive time.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

#: Decisions at a schedule point.
NOTHING, SUBMIT, SKIP = 0, 1, 2


def agreed_version(current: int, complete: Sequence[Sequence[int]]) -> int:
    """The highest version complete on every node: ``complete[r][i]`` is true when version
    ``current + 1 + i`` is complete where rank ``r`` runs; ``current`` when there is none.

    Not the minimum of each node's newest: a version that failed on one node is never chosen,
    even when a later one succeeded there and that failed version is another node's newest.
    """
    width = min((len(row) for row in complete), default=0)
    for i in range(width - 1, -1, -1):
        if all(row[i] for row in complete):
            return current + 1 + i
    return current


class RefreshSchedule:
    """The refresh schedule of one run; :meth:`state_dict` goes into the checkpoint."""

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
        max_backoff_schedules: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self.max_backoff_schedules = max_backoff_schedules
        self.clock = clock
        self.next_refresh_step = every_n_steps or 0
        self.consecutive_failures = 0
        self.skip_schedules = 0
        self.failures_total = 0
        self.last_refresh_t = clock()
        self.forced = False  # due_now: a refresh point at the next decision, whatever the schedule

    def due(self, step: int, max_steps: int | None = None) -> bool:
        """Whether ``step`` is a refresh point (never at or after the last step)."""
        if max_steps and max_steps > 0 and step >= max_steps:
            return False
        by_steps = bool(self.every_n_steps) and step >= self.next_refresh_step
        by_time = bool(self.every_minutes) and self.clock() - self.last_refresh_t >= 60 * self.every_minutes
        return by_steps or by_time or self.forced

    def decide(self, step: int, max_steps: int | None = None, busy: bool = False) -> int:
        """NOTHING when not due; SKIP during a backoff or while a refresh is ``busy``; else SUBMIT.
        A SKIP consumes one backoff schedule."""
        if not self.due(step, max_steps):
            return NOTHING
        if self.skip_schedules > 0:
            self.skip_schedules -= 1
            return SKIP
        if busy:
            return SKIP
        return SUBMIT

    def advance(self, step: int) -> None:
        """A schedule point was taken (submitted or skipped) at ``step``: set the next one."""
        if self.every_n_steps:
            self.next_refresh_step = step + self.every_n_steps
        self.last_refresh_t = self.clock()
        self.forced = False

    def restart_timer(self) -> None:
        self.last_refresh_t = self.clock()

    def due_now(self, step: int) -> None:
        """Make ``step`` (or the first decision after it) a refresh point, for step and time schedules
        alike (a refresh in flight at a checkpoint is redone on resume)."""
        self.next_refresh_step = min(self.next_refresh_step, step)
        self.forced = True

    def failed(self) -> None:
        self.consecutive_failures += 1
        self.failures_total += 1
        self.skip_schedules = min(2 ** (self.consecutive_failures - 1) - 1, self.max_backoff_schedules)

    def succeeded(self) -> None:
        self.consecutive_failures = 0

    def state_dict(self) -> dict:
        return {
            "next_refresh_step": self.next_refresh_step,
            "consecutive_failures": self.consecutive_failures,
            "skip_schedules": self.skip_schedules,
            "failures_total": self.failures_total,
        }

    def load_state_dict(self, state: dict) -> None:
        self.next_refresh_step = int(state["next_refresh_step"])
        self.consecutive_failures = int(state["consecutive_failures"])
        self.skip_schedules = int(state["skip_schedules"])
        self.failures_total = int(state.get("failures_total", 0))
