"""Online judge reliability: does the large model agree with the small answers we accepted?

A sample of accepted answers is re-asked of the large model in the background (the shadow);
the agreement rate over a sliding window estimates how often the judge's acceptances are
right. Research on cascades finds cost savings collapse into quality loss below about 80%,
so the tracker flags the estimate once enough pairs exist and it is under the warning
level (the 95% Wilson interval is exported alongside, to read it with).
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any, Literal

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"\w+")


def final_number(text: str) -> str | None:
    """The answer's last number, normalised ('1,000.50' -> '1000.5')."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return f"{value:g}"


def token_overlap(a: str, b: str) -> float:
    """Jaccard similarity of the lower-cased word sets."""
    sa, sb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def agree(small: str, large: str, how: Literal["final-answer", "text-overlap"],
          overlap_threshold: float) -> bool:
    if how == "final-answer":
        a, b = final_number(small), final_number(large)
        if a is not None and b is not None:
            return a == b
    return token_overlap(small, large) >= overlap_threshold


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # (exact at the ends: centre - half is 0 only up to rounding when p is 0, e.g. 2.8e-17)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


class ReliabilityTracker:
    """Agreement over the last `window` shadow pairs, plus the shadow's own bookkeeping."""

    def __init__(self, window: int, min_samples: int, warn_below: float) -> None:
        self._pairs: deque[bool] = deque(maxlen=window)
        self._min_samples = min_samples
        self._warn_below = warn_below
        self.sampled = 0
        self.skipped = 0  # sampled while max_in_flight shadows ran
        self.failed = 0  # the large model's shadow call failed

    def record(self, agreed: bool) -> bool:
        """Add a pair; return True when this pair moved the route into the warning state."""
        before = self.warning
        self._pairs.append(agreed)
        return self.warning and not before

    @property
    def n(self) -> int:
        return len(self._pairs)

    @property
    def estimate(self) -> float | None:
        return sum(self._pairs) / self.n if self.n else None

    @property
    def warning(self) -> bool:
        """The estimate is under the warning level, over at least `min_samples` pairs."""
        estimate = self.estimate
        return (self.n >= self._min_samples and estimate is not None
                and estimate < self._warn_below)

    def snapshot(self) -> dict[str, Any]:
        low, high = wilson_interval(sum(self._pairs), self.n)
        return {
            "estimate": self.estimate, "ci95": [low, high], "pairs": self.n,
            "sampled": self.sampled, "skipped": self.skipped, "failed": self.failed,
            "warn_below": self._warn_below, "min_samples": self._min_samples,
            "warning": self.warning,
        }
