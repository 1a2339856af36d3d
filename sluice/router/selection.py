"""Model selection by constraint: per request, the cheapest candidate that meets the
request's latency and quality bars, and why.

A selection route (a virtual model in the routing config, `selections:`) names candidates,
catalog models local or hosted. For each request every candidate has three facts:

- its **price** for this request: the prompt's estimated tokens plus the completion's bound
  (`max_tokens`, else the route's `expected_output_tokens`) at the model's catalog prices;
- its **measured TTFT p95**: what this ingress replica saw the model do over the last
  `window_s` seconds (`ObservedLatency`, fed by settlement from every answer the model gave:
  the first token's time for a stream, the whole answer's for one not streamed, which is
  when a client sees its first token). Not a typed number. With fewer than `min_samples`
  samples it is *unmeasured*: it passes a latency bar (otherwise a model never chosen could
  never be measured) and the reason says so;
- its **measured quality** for the request's task type: from the route's quality file,
  written by `sluice route quality` from the labeled routing data (the offline evaluator's
  numbers). A candidate with no measured quality for the task fails a quality bar.

The bars come from the request (`x-sluice-task`, `x-sluice-max-ttft-ms`,
`x-sluice-min-quality`) or the route's defaults. The cheapest candidate meeting both
answers; when none does, the best effort answers: the highest quality among those within
the latency bar, else the fastest. `x-sluice-selection` says which and why.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class ObservedLatency:
    """TTFT samples per model over a sliding window; p95 on demand, recomputed at most every
    `refresh_s` (a percentile over thousands of samples per candidate per request would
    cost milliseconds on the event loop)."""

    def __init__(self, window_s: float = 300.0, max_samples: int = 2000,
                 clock: Callable[[], float] = time.monotonic, refresh_s: float = 1.0) -> None:
        self._window_s, self._max, self._clock = window_s, max_samples, clock
        self._refresh_s = refresh_s
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._p95: dict[tuple[str, float], tuple[float, float | None, int]] = {}

    def observe(self, model: str, ttft_s: float) -> None:
        samples = self._samples.setdefault(model, deque(maxlen=self._max))
        samples.append((self._clock(), ttft_s))

    def p95_ms(self, model: str, window_s: float | None = None) -> tuple[float | None, int]:
        """(p95 in ms or None, how many samples it is over) over the last `window_s` (at
        most the window this keeps)."""
        now = self._clock()
        key = (model, window_s or self._window_s)
        cached = self._p95.get(key)
        if cached is not None and now - cached[0] < self._refresh_s:
            return cached[1], cached[2]
        value = self._compute(model, key[1], now)
        self._p95[key] = (now, *value)
        return value

    def _compute(self, model: str, window_s: float, now: float) -> tuple[float | None, int]:
        samples = self._samples.get(model)
        while samples and now - samples[0][0] > self._window_s:
            samples.popleft()
        since = now - min(window_s, self._window_s)
        recent = [s for t, s in samples or () if t >= since]
        if not recent:
            return None, 0
        return float(np.percentile(recent, 95)) * 1000, len(recent)


@dataclass(frozen=True)
class Constraints:
    task: str
    max_ttft_ms: float | None = None
    min_quality: float | None = None


@dataclass(frozen=True)
class Candidate:
    name: str
    cost_usd: float
    ttft_p95_ms: float | None  # None: unmeasured (fewer samples than the route asks)
    quality: float | None  # None: no measured quality for the task


@dataclass(frozen=True)
class Selection:
    model: str
    reason: str
    met: bool  # every bar was met (False: best effort)


def _why_not(c: Candidate, bars: Constraints) -> str | None:
    if bars.min_quality is not None:
        if c.quality is None:
            return f"{c.name}: quality({bars.task}) unmeasured"
        if c.quality < bars.min_quality:
            return f"{c.name}: quality({bars.task}) {c.quality:.3f} < {bars.min_quality:g}"
    if (bars.max_ttft_ms is not None and c.ttft_p95_ms is not None
            and c.ttft_p95_ms > bars.max_ttft_ms):
        return f"{c.name}: ttft p95 {c.ttft_p95_ms:.0f} ms > {bars.max_ttft_ms:g} ms"
    return None


def _facts(c: Candidate, bars: Constraints) -> str:
    parts = [f"${c.cost_usd:.6f}"]
    if bars.min_quality is not None:
        parts.append(f"quality({bars.task}) {c.quality:.3f}" if c.quality is not None
                     else f"quality({bars.task}) unmeasured")
    if bars.max_ttft_ms is not None:
        parts.append(f"ttft p95 {c.ttft_p95_ms:.0f} ms" if c.ttft_p95_ms is not None
                     else "ttft p95 unmeasured")
    return ", ".join(parts)


def _bars(bars: Constraints) -> str:
    said = [f"quality({bars.task}) >= {bars.min_quality:g}"] if bars.min_quality is not None \
        else []
    if bars.max_ttft_ms is not None:
        said.append(f"ttft p95 <= {bars.max_ttft_ms:g} ms")
    return " and ".join(said) or "no bar"


def select(candidates: Sequence[Candidate], bars: Constraints) -> Selection:
    """The cheapest candidate meeting every bar (ties: the route's order); else best effort."""
    ranked = sorted(enumerate(candidates), key=lambda ic: (ic[1].cost_usd, ic[0]))
    passed: list[str] = []
    for _, c in ranked:
        why = _why_not(c, bars)
        if why is None:
            skipped = f"; passed over: {'; '.join(passed)}" if passed else ""
            return Selection(c.name, f"{c.name} ({_facts(c, bars)}): the cheapest meeting "
                             f"{_bars(bars)}{skipped}", True)
        passed.append(why)
    in_time = [c for c in candidates if bars.max_ttft_ms is None or c.ttft_p95_ms is None
               or c.ttft_p95_ms <= bars.max_ttft_ms]
    if in_time:
        best = max(in_time, key=lambda c: (c.quality if c.quality is not None else -1.0))
        how = "the best quality within the latency bar"
    else:
        best = min(candidates, key=lambda c: c.ttft_p95_ms or 0.0)
        how = "the fastest"
    return Selection(best.name, f"{best.name} ({_facts(best, bars)}): none meets "
                     f"{_bars(bars)} ({'; '.join(passed)}); best effort, {how}", False)


def candidates_for(names: Sequence[str], cost: Callable[[str], float],
                   latency: ObservedLatency, min_samples: int, window_s: float,
                   quality: Mapping[str, Mapping[str, float]], task: str) -> list[Candidate]:
    out = []
    for name in names:
        p95, n = latency.p95_ms(name, window_s)
        out.append(Candidate(name, cost(name), p95 if n >= min_samples else None,
                             quality.get(task, {}).get(name)))
    return out
