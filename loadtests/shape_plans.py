"""Load schedules as pure functions of run time: (users, spawn rate) or None to stop.

The Locust shape classes in loadtests/shapes/ are thin wrappers (one per file, since Locust
uses the shape class found in the files it is given).
"""

from __future__ import annotations

import math


def step_ramp(t: float, start: int = 1, step: int = 2, every_s: float = 30,
              steps: int = 6) -> tuple[int, float] | None:
    """start, start+step, ... users, each level held every_s seconds."""
    level = int(t // every_s)
    if level >= steps:
        return None
    return start + level * step, float(max(step, 1))


def spike(t: float, base: int = 2, peak: int = 16, before_s: float = 30,
          spike_s: float = 20, after_s: float = 30) -> tuple[int, float] | None:
    """Steady base load, a sudden spike, then base again."""
    if t < before_s:
        return base, float(base)
    if t < before_s + spike_s:
        return peak, float(peak)  # all at once
    if t < before_s + spike_s + after_s:
        return base, float(peak)
    return None


def diurnal(t: float, low: int = 1, high: int = 12, period_s: float = 300,
            cycles: int = 1) -> tuple[int, float] | None:
    """A day compressed into period_s: trough at the start, peak at mid-period."""
    if t >= period_s * cycles:
        return None
    phase = (t % period_s) / period_s
    users = low + (high - low) * (1 - math.cos(2 * math.pi * phase)) / 2
    return max(low, round(users)), float(max(1, (high - low) // 4))
