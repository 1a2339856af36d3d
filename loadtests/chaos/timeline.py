"""Success rate over time and time to recovery, from (send time, succeeded) pairs.

Requests are placed at the time they were sent, so a request that hung for 30 s counts
against the moment it was sent, not when the client gave up. The rate at time t is over
the trailing window (t - window, t]. Time to recovery is measured from the fault's
injection to the moment after which every trailing window holds at least `threshold`
successes (windows with no request say nothing): 0 when no window after the fault fell
below it, None when the run ended below it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

WINDOW_S = 2.0
THRESHOLD = 0.99
STEP_S = 0.1


def _prepared(points: Sequence[tuple[float, bool]]) -> tuple[list[float], list[int]]:
    ordered = sorted(points)
    times = [t for t, _ in ordered]
    wins = [0]
    for _, ok in ordered:
        wins.append(wins[-1] + (1 if ok else 0))
    return times, wins


def _rate(times: list[float], wins: list[int], end: float, window_s: float
          ) -> float | None:
    lo, hi = bisect_right(times, end - window_s), bisect_right(times, end)
    if hi == lo:
        return None
    return (wins[hi] - wins[lo]) / (hi - lo)


def success_rate(points: Sequence[tuple[float, bool]], start: float, end: float,
                 window_s: float = WINDOW_S, step_s: float = STEP_S
                 ) -> list[tuple[float, float | None]]:
    """(t, success rate over (t - window, t]) on a grid from start to end."""
    times, wins = _prepared(points)
    n = int(round((end - start) / step_s))
    return [(start + i * step_s, _rate(times, wins, start + i * step_s, window_s))
            for i in range(n + 1)]


def recovery_s(points: Sequence[tuple[float, bool]], fault_s: float,
               window_s: float = WINDOW_S, threshold: float = THRESHOLD,
               step_s: float = STEP_S) -> float | None:
    """Seconds from `fault_s` until the trailing success rate stays >= threshold."""
    times, wins = _prepared(points)
    if not times or times[-1] < fault_s:
        return 0.0
    # the rate changes only where a request enters or leaves the window: check those
    # instants (and the grid, for readable numbers) from the fault to the last request
    last = times[-1]
    candidates = {fault_s}
    first = bisect_left(times, fault_s - window_s)
    for t in times[first:]:
        candidates.update((t, t + window_s))
    n = int((last - fault_s) / step_s)
    candidates.update(fault_s + i * step_s for i in range(n + 1))
    bad = [t for t in candidates if fault_s <= t <= last + window_s
           and (r := _rate(times, wins, t, window_s)) is not None and r < threshold]
    if not bad:
        return 0.0
    worst = max(bad)
    # the first instant after the last bad window at which a window is good again
    good_after = [t for t in candidates if t > worst
                  and (r := _rate(times, wins, t, window_s)) is not None and r >= threshold]
    if not good_after:
        return None
    return round(min(good_after) - fault_s, 2)
