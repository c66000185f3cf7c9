"""dr.refresh.schedule: when a refresh is due and the backoff after failures, without a Trainer."""

from __future__ import annotations

from dr.refresh.schedule import NOTHING, SKIP, SUBMIT, RefreshSchedule, agreed_version


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _points(
    schedule: RefreshSchedule, steps: range, max_steps: int | None = None, busy=lambda step: False
) -> dict[int, int]:
    out = {}
    for step in steps:
        decision = schedule.decide(step, max_steps, busy=busy(step))
        if decision != NOTHING:
            schedule.advance(step)
            out[step] = decision
    return out


def test_every_n_steps_never_at_the_last_step():
    assert _points(RefreshSchedule(every_n_steps=10), range(31), max_steps=30) == {10: SUBMIT, 20: SUBMIT}


def test_every_minutes_follows_the_clock():
    clock = Clock()
    schedule = RefreshSchedule(every_minutes=2, clock=clock)
    assert schedule.decide(5) == NOTHING
    clock.t += 119
    assert schedule.decide(6) == NOTHING
    clock.t += 1
    assert schedule.decide(7) == SUBMIT
    schedule.advance(7)
    assert schedule.decide(8) == NOTHING  # the timer restarted at the refresh


def test_busy_refresh_is_skipped():
    points = _points(RefreshSchedule(every_n_steps=3), range(10), busy=lambda step: step == 6)
    assert points == {3: SUBMIT, 6: SKIP, 9: SUBMIT}


def test_backoff_skips_2_to_the_k_minus_1_minus_1_schedules():
    schedule = RefreshSchedule(every_n_steps=1, max_backoff_schedules=8)
    skipped = []
    for failures in range(1, 6):
        schedule.failed()
        n = 0
        while schedule.decide(100) == SKIP:
            n += 1
        skipped.append(n)
    assert skipped == [0, 1, 3, 7, 8]  # capped at max_backoff_schedules
    schedule.succeeded()
    schedule.failed()
    assert schedule.skip_schedules == 0 and schedule.failures_total == 6


def test_state_round_trip_and_resubmission():
    schedule = RefreshSchedule(every_n_steps=5)
    schedule.advance(5)
    schedule.failed()
    schedule.failed()
    restored = RefreshSchedule(every_n_steps=5)
    restored.load_state_dict(schedule.state_dict())
    assert (
        restored.state_dict()
        == schedule.state_dict()
        == {
            "next_refresh_step": 10,
            "consecutive_failures": 2,
            "skip_schedules": 1,
            "failures_total": 2,
        }
    )
    restored.due_now(7)
    assert restored.due(7)


def test_resubmission_works_for_a_time_schedule_too():
    clock = Clock()
    schedule = RefreshSchedule(every_minutes=10, clock=clock)
    schedule.due_now(4)
    assert schedule.decide(4) == SUBMIT
    schedule.advance(4)
    assert schedule.decide(5) == NOTHING


def test_ranks_agree_on_the_highest_version_complete_on_every_node():
    # complete[r][i]: version current+1+i is complete on rank r's node
    assert agreed_version(3, [[], []]) == 3
    assert agreed_version(0, [[1, 1, 0], [1, 1, 1]]) == 2
    # v2 failed on node 1 and v3 succeeded there; node 0 has v2 but not yet v3. The minimum of the
    # nodes' newest (2) would be the failed version: the agreement stays on v1 ...
    assert agreed_version(0, [[1, 1, 0], [1, 0, 1]]) == 1
    # ... and takes v3 once node 0 has it too.
    assert agreed_version(0, [[1, 1, 1], [1, 0, 1]]) == 3
    assert agreed_version(1, [[0, 1], [1, 0]]) == 1  # nothing newer complete on both
    assert agreed_version(5, [[1, 0, 1]]) == 8  # one node: its newest complete version
