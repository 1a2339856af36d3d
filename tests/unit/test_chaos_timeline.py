"""Success rate over a trailing window and time to recovery (loadtests.chaos.timeline)."""

from __future__ import annotations

import pytest

from loadtests.chaos.timeline import recovery_s, success_rate


def steady(start: float, end: float, ok: bool = True, rate: float = 4.0
           ) -> list[tuple[float, bool]]:
    n = int((end - start) * rate)
    return [(start + i / rate, ok) for i in range(n)]


def test_no_failure_after_the_fault_is_no_recovery_time() -> None:
    assert recovery_s(steady(0, 20), fault_s=10) == 0.0
    # a failure before the fault is not the fault's
    assert recovery_s([(1.0, False), *steady(2, 20)], fault_s=10) == 0.0


def test_recovery_ends_when_the_last_failure_leaves_the_window() -> None:
    points = steady(0, 10) + steady(10, 13, ok=False) + steady(13, 30)
    # the last failure is sent at 12.75; the window (t - 2, t] is clear of it at 14.75
    assert recovery_s(points, fault_s=10) == pytest.approx(4.75)
    single = steady(0, 10) + [(10.0, False)] + steady(10.25, 30)
    assert recovery_s(single, fault_s=10) == pytest.approx(2.0)  # one failure: one window


def test_a_late_failure_counts_from_the_fault() -> None:
    points = steady(0, 18) + [(18.0, False)] + steady(18.25, 30)
    assert recovery_s(points, fault_s=10) == pytest.approx(10.0)


def test_a_run_that_ends_failing_did_not_recover() -> None:
    points = steady(0, 10) + steady(10, 20, ok=False)
    assert recovery_s(points, fault_s=10) is None


def test_one_failure_among_many_can_stay_above_the_threshold() -> None:
    points = steady(0, 30, rate=200.0)
    points[2100] = (points[2100][0], False)  # sent at 10.5: 1 of 400 in its windows
    assert recovery_s(points, fault_s=10, threshold=0.99) == 0.0
    assert recovery_s(points, fault_s=10, threshold=1.0) == pytest.approx(2.5, abs=0.01)


def test_success_rate_series() -> None:
    points = steady(0, 4) + steady(4, 6, ok=False)
    series = dict((round(t, 1), r) for t, r in success_rate(points, 0, 8, window_s=2.0,
                                                             step_s=1.0))
    assert series[0.0] == 1.0  # the first request alone
    assert series[3.0] == 1.0
    assert series[5.0] == pytest.approx(0.5, abs=0.15)
    assert series[7.0] == 0.0  # only failures in (5, 7]
    assert series[8.0] is None or series[8.0] == 0.0
