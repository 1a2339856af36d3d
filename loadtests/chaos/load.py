"""Open-loop load: chat requests at a fixed rate, whatever the answers do.

Request i is sent at i / rate seconds whether or not earlier ones have finished (a closed
loop would slow down exactly when the platform fails, and hide the failure). The mix is
drawn from a seeded generator: streaming or not, `max_tokens` in a small range (the CPU
engines stay fast), a prompt of its own (unique words, so the response cache never
answers), `ignore_eos` so every answer is as long as it asked. Each request carries its own
`x-request-id` (what the ledger check looks for) and runs under a hard client timeout; what
it saw is an `Observation` (`loadtests.chaos.outcomes`).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from loadtests.chaos.outcomes import KEPT_HEADERS, Observation

_WORDS = ("river", "stone", "cloud", "lamp", "orbit", "maple", "signal", "harbor", "copper",
          "meadow", "violet", "engine", "canyon", "quartz", "ember", "lantern")


@dataclass(frozen=True)
class LoadSpec:
    rate: float  # requests per second
    duration_s: float
    model: str = "small"
    stream_share: float = 0.5
    min_tokens: int = 16
    max_tokens: int = 32
    client_timeout_s: float = 30.0


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    at_s: float
    request_id: str
    stream: bool
    body: dict[str, object]


def plan(spec: LoadSpec, seed: int, id_prefix: str) -> list[PlannedRequest]:
    """The requests of one run, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for i in range(int(spec.rate * spec.duration_s)):
        stream = rng.random() < spec.stream_share
        words = " ".join(rng.choice(_WORDS) for _ in range(6))
        body: dict[str, object] = {
            "model": spec.model, "max_tokens": rng.randint(spec.min_tokens, spec.max_tokens),
            "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": f"{id_prefix} {i}: {words}"}]}
        if stream:
            body["stream"] = True
        out.append(PlannedRequest(i, i / spec.rate, f"{id_prefix}-{i:05d}", stream, body))
    return out


@dataclass
class Traffic:
    """The requests in flight and those finished, as the load goes; the fault steps read
    it from their thread to pick a victim the load is using (hence the lock)."""

    in_flight: dict[int, Observation] = field(default_factory=dict)
    finished: list[Observation] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self, obs: Observation) -> None:
        with self._lock:
            self.in_flight[obs.index] = obs

    def ended(self, obs: Observation) -> None:
        with self._lock:
            self.in_flight.pop(obs.index, None)
            self.finished.append(obs)

    def busiest(self, header: str) -> str | None:
        """The value of `header` (a replica's name) most common among the requests in
        flight that have their headers (streams being read); else the latest answer's."""
        with self._lock:
            flying = Counter(o.headers[header] for o in self.in_flight.values()
                             if header in o.headers)
            if flying:
                return flying.most_common(1)[0][0]
            for obs in reversed(self.finished):
                if header in obs.headers:
                    return obs.headers[header]
        return None

    def wait_in_flight(self, header: str, timeout_s: float) -> str | None:
        """Block (a fault step's thread) until a request in flight names its replica in
        `header` (a stream being read), up to timeout_s; that replica, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for obs in self.in_flight.values():
                    if header in obs.headers:
                        return obs.headers[header]
            time.sleep(0.005)
        return None

    def holding(self, header: str, values: set[str]) -> bool:
        """Whether a request in flight names one of `values` in `header` (a stream being
        read from one of those replicas)."""
        with self._lock:
            return any(o.headers.get(header) in values for o in self.in_flight.values())

    def counts(self) -> tuple[list[Observation], int]:
        with self._lock:
            return list(self.finished), len(self.in_flight)


def _kept(headers: httpx.Headers) -> dict[str, str]:
    return {k: headers[k] for k in KEPT_HEADERS if k in headers}


def _error_of(text: str) -> str:
    """`code: message` of an OpenAI error body; "" for anything else."""
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(err, dict) or "message" not in err:
        return ""
    return f"{err.get('code') or err.get('type') or ''}: {str(err.get('message'))[:300]}"


async def _read_stream(resp: httpx.Response, obs: Observation, started: float) -> None:
    async for line in resp.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):].strip()
        if data == "[DONE]":
            obs.done = True
        elif data.startswith('{"error"') or data.startswith('{ "error"'):
            obs.error_event = True
            obs.error = _error_of(data) or data[:300]
        else:
            if not obs.chunks:
                obs.first_chunk_s = time.monotonic() - started
            obs.chunks += 1


async def send(client: httpx.AsyncClient, req: PlannedRequest, started: float,
               timeout_s: float, traffic: Traffic) -> Observation:
    """One request, bounded by timeout_s end to end (connect, headers, whole body)."""
    obs = Observation(req.index, req.request_id, req.stream, time.monotonic() - started)
    traffic.started(obs)
    headers = {"x-request-id": req.request_id}
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", "/v1/chat/completions", json=req.body,
                                     headers=headers) as resp:
                obs.status, obs.headers = resp.status_code, _kept(resp.headers)
                if req.stream and resp.status_code == 200:
                    await _read_stream(resp, obs, started)
                else:
                    text = (await resp.aread()).decode(errors="replace")
                    if resp.status_code == 200:
                        try:
                            obs.body_ok = bool(json.loads(text).get("choices"))
                        except (ValueError, AttributeError):
                            obs.error = f"not an answer: {text[:300]}"
                    else:
                        obs.error = _error_of(text)
                        obs.openai_error = bool(obs.error)
                        obs.error = obs.error or f"(not error JSON) {text[:300]}"
                obs.body_complete = True
    except (TimeoutError, httpx.TimeoutException):
        obs.timed_out = True
    except httpx.RequestError as exc:  # connect, read, protocol, decoding
        obs.transport_error = type(exc).__name__
        obs.error = obs.error or str(exc)[:300]
    obs.ended_s = time.monotonic() - started
    traffic.ended(obs)
    return obs


Progress = Callable[[float, list[Observation], int], None]


async def run(base_url: str, requests: list[PlannedRequest], spec: LoadSpec,
              started: float, progress: Progress | None = None,
              progress_every_s: float = 5.0, traffic: Traffic | None = None
              ) -> list[Observation]:
    """Send every planned request at its time (relative to `started`, a monotonic clock
    reading) and wait for all of them; `progress(t, finished, in_flight)` every few s."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    timeout = httpx.Timeout(spec.client_timeout_s + 5)  # the hard bound is asyncio's
    traffic = traffic if traffic is not None else Traffic()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        tasks: list[asyncio.Task[Observation]] = []
        next_report = progress_every_s
        for req in requests:
            delay = started + req.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                send(client, req, started, spec.client_timeout_s, traffic)))
            now = time.monotonic() - started
            if progress is not None and now >= next_report:
                progress(now, *traffic.counts())
                next_report += progress_every_s
        results = await asyncio.gather(*tasks)
    return sorted(results, key=lambda o: o.index)
