"""Which backend of a failover chain to try, and which to put aside for a while.

A catalog model's chain is the model itself, then its `failover` models in order. A backend
that fails a request before its first byte (a retriable 503: engine or provider down,
overloaded, timed out, rate-limited) passes the request to the next. One that failed
`threshold` times in a row is put aside for `cooldown_s` (a circuit breaker, as LiteLLM's
cooldowns); a provider that answered 429 with `Retry-After` is put aside for that long at
once. A backend put aside is tried only after every other (a chain whose backends are all
aside still answers if one has recovered); once its time is up it is tried again, and its
first success clears its count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class _State:
    failures: int = 0
    aside_until: float = float("-inf")


@dataclass
class Breaker:
    threshold: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def _state(self, backend: str) -> _State:
        return self._states.setdefault(backend, _State())

    def aside(self, backend: str) -> bool:
        return self._state(backend).aside_until > self.clock()

    def order(self, chain: Sequence[str]) -> list[str]:
        """The chain's backends to try, in order: those not put aside, then the others."""
        ready = [b for b in chain if not self.aside(b)]
        return ready + [b for b in chain if b not in ready]

    def failed(self, backend: str, aside_s: float | None = None) -> None:
        """A failure before the first byte; `aside_s`: the backend said how long to wait."""
        state = self._state(backend)
        state.failures += 1
        now = self.clock()
        if aside_s is not None and aside_s > 0:
            state.aside_until = max(state.aside_until, now + aside_s)
        elif state.failures >= self.threshold:
            state.aside_until = now + self.cooldown_s
            state.failures = 0

    def succeeded(self, backend: str) -> None:
        state = self._state(backend)
        state.failures, state.aside_until = 0, float("-inf")
