"""What a replica tells the autoscaler: p95 TTFT and TPOT of its recent requests.

`LatencyWindow` keeps (finish time, TTFT, TPOT) of the requests that finished within the
last `window_s` seconds; `timed` wraps an engine's output stream to measure them (first item =
first token; content chunks of a stream, or the usage of a whole response, = tokens).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from sluice import sse
from sluice.autoscaling.serve_policy import AGE_METRIC, TPOT_METRIC, TTFT_METRIC


class LatencyWindow:
    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 max_samples: int = 10_000) -> None:
        self._window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, float | None, float | None]] = deque(
            maxlen=max_samples)

    def record(self, ttft_s: float | None, tpot_s: float | None) -> None:
        self._samples.append((self._clock(), ttft_s, tpot_s))

    def stats(self) -> dict[str, float]:
        """p95s over the window and the age of the newest sample; {} without samples."""
        now = self._clock()
        while self._samples and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()
        if not self._samples:
            return {}
        out = {AGE_METRIC: now - self._samples[-1][0]}
        ttfts = [s[1] for s in self._samples if s[1] is not None]
        if ttfts:
            out[TTFT_METRIC] = float(np.percentile(ttfts, 95))
        tpots = [s[2] for s in self._samples if s[2] is not None]
        if tpots:
            out[TPOT_METRIC] = float(np.percentile(tpots, 95))
        return out


def _tokens(item: Any) -> int:
    """Output tokens in one stream item (SSE strings) or a whole response (its usage)."""
    usage = getattr(item, "usage", None)
    if usage is not None and getattr(usage, "completion_tokens", None) is not None:
        return int(usage.completion_tokens)
    chunks = item if isinstance(item, list) else [item]
    count = 0
    for chunk in chunks:
        body = sse.payload(chunk) if isinstance(chunk, str) else None
        if body is None:
            continue
        for choice in body.get("choices") or []:
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                count += 1
    return count


def _is_error(item: Any) -> bool:
    head = item[0] if isinstance(item, list) and item else item
    return getattr(head, "error", None) is not None or (
        isinstance(head, str) and sse.is_error(head))


async def timed(stream: AsyncIterator[Any], window: LatencyWindow,
                clock: Callable[[], float] = time.monotonic) -> AsyncIterator[Any]:
    """Relay `stream` unchanged, recording its TTFT and TPOT when it completes. A whole
    (non-streamed) response has no observable TTFT: only its time per token counts."""
    started = clock()
    first: float | None = None
    whole = False
    tokens = 0
    async for item in stream:
        if first is None:
            if _is_error(item):  # a rejection is not a latency sample
                yield item
                async for rest in stream:
                    yield rest
                return
            first = clock() - started
            whole = getattr(item, "usage", None) is not None and not isinstance(item, list)
        tokens += _tokens(item)
        yield item
    if first is None:
        return
    total = clock() - started
    if whole:
        window.record(None, total / tokens if tokens else None)
    else:
        window.record(first, (total - first) / (tokens - 1) if tokens > 1 else None)
