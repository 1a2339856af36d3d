"""Whether an engine replica still answers real requests, not only Ray Serve LLM's ping.

Serve asks each replica `check_health` every few seconds, and Ray Serve LLM's answer is
vLLM's `check_health`: it fails only once the engine core is known to be dead. An engine
that is alive but no longer produces output (a wedged core, a stopped process, a bad
device) passes that check while every request on it hangs or fails (ray issue #61263).

So each replica also watches its own requests (`RequestWatch`): it becomes *suspect* when a
request fails on the engine's side (an exception, or an error response with a 5xx code),
when a stream is abandoned (its reader cancelled it: perhaps the ingress's stall timeout),
or when a stream in flight has produced nothing for `silent_after_s`. A suspect replica's
next health check sends a real one-token completion through the engine (`probe`), bounded by
`probe_timeout_s`. If the probe fails or times out, the health check fails and Serve
replaces the replica; if it answers, the suspicion is cleared. A healthy replica that nobody
cancels costs nothing beyond the ping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

PROBE_PREFIX = "sluice-health-probe"  # request ids of probes (not watched themselves)


@dataclass(frozen=True)
class HealthSettings:
    silent_after_s: float = 60.0  # a stream in flight with no output this long is suspect
    probe_timeout_s: float = 10.0  # a probe's one token must arrive within this


def _server_error(item: Any) -> bool:
    """An engine-side error response (5xx), in any of the forms the engine yields."""
    if isinstance(item, list) and item:
        item = item[0]
    error = getattr(item, "error", None)
    code = getattr(error, "code", None)
    try:
        return error is not None and int(code) >= 500  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


class RequestWatch:
    """One replica's view of its own requests (pure bookkeeping; the clock is passed in)."""

    def __init__(self, settings: HealthSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self._clock = settings, clock
        self._streams: dict[int, float] = {}  # in-flight stream -> when it last produced
        self._suspect: str | None = None
        self._next = 0

    @property
    def suspect(self) -> str | None:
        """Why a probe is due, or None."""
        if self._suspect is not None:
            return self._suspect
        now = self._clock()
        silent = [now - t for t in self._streams.values()
                  if now - t > self.settings.silent_after_s]
        if silent:
            return f"a stream in flight produced nothing for {max(silent):.0f} s"
        return None

    def cleared(self) -> None:
        self._suspect = None

    def _suspected(self, why: str) -> None:
        self._suspect = self._suspect or why

    async def watched(self, stream: AsyncIterator[Any], streaming: bool
                      ) -> AsyncIterator[Any]:
        """`stream`, item for item, noting what its requests tell about the engine."""
        key, self._next = self._next, self._next + 1
        if streaming:
            self._streams[key] = self._clock()
        ended = False
        try:
            async for item in stream:
                if _server_error(item):
                    self._suspected("the engine answered a request with a server error")
                if streaming:
                    self._streams[key] = self._clock()
                yield item
            ended = True
        except Exception:
            ended = True
            self._suspected("a request failed inside the engine")
            raise
        finally:
            self._streams.pop(key, None)
            if not ended and streaming:
                self._suspected("a stream was abandoned before it ended")


async def probe(complete: Callable[[], Awaitable[AsyncIterator[Any]]],
                timeout_s: float) -> None:
    """One real completion through the engine; raise if it errs or takes too long."""
    async def run() -> None:
        stream = await complete()
        async for item in stream:
            if _server_error(item) or getattr(item, "error", None) is not None:
                raise RuntimeError(f"the engine refused a one-token probe: {item!r}"[:500])
            return
        raise RuntimeError("the engine answered a one-token probe with nothing")

    try:
        await asyncio.wait_for(run(), timeout=timeout_s)
    except TimeoutError:
        raise RuntimeError(f"a one-token probe got no answer within {timeout_s:g} s") from None
