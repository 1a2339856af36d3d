"""The shared Redis paused (SIGSTOP: connections stay open, nothing answers), under requests
that use every part of the tier it holds: the engines' KV lookups and stores (LMCache), the
response cache, and the semantic cache. Each part has its documented degraded mode, so every
request is still answered, none waits much past its stores' budgets, and once Redis resumes
the caches work again without a restart.

Marked `destructive`: it runs after the other integration tests (it pauses the shared Redis).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.destructive]
PAUSE_S = 12.0
# a request may wait about the KV tier's bound per Redis call (1 s, a lookup and a store)
# plus the response cache's budget: far under this, far over a normal answer's wait
SLOWEST_S = 8.0


def _redis_server(port: int) -> psutil.Process:
    """(redis-server retitles itself `redis-server 127.0.0.1:<port>`)"""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "redis-server" in cmdline and (f":{port}" in cmdline
                                          or f"--port {port}" in cmdline):
            return proc
    pytest.fail(f"no redis-server on port {port}")


def _prompt(tag: str) -> str:
    words = ["lock", "gate", "weir", "sluice", "canal", "barge", "towpath", "basin"]
    return f"[{tag}] " + " ".join(f"{words[i % len(words)]}{i % 5}" for i in range(200))


def _ask(http: httpx.Client, tag: str, stream: bool, semantic: bool = False
         ) -> tuple[int, float, httpx.Response]:
    headers = {"x-sluice-semantic-cache": "allow"} if semantic else {}
    body = {"model": "small", "max_tokens": 4, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": _prompt(tag)}]}
    started = time.monotonic()
    resp = http.post("/v1/chat/completions", json=body, headers=headers, timeout=60)
    return resp.status_code, time.monotonic() - started, resp


def test_a_paused_redis_degrades_every_cache_and_loses_no_request(stack, http) -> None:
    warm = uuid.uuid4().hex[:8]
    status, baseline_s, resp = _ask(http, warm, stream=False)
    assert status == 200, resp.text
    assert _ask(http, warm, stream=False)[2].headers["x-sluice-cache"] == "hit"

    redis = _redis_server(urlsplit(stack.redis_url).port or 6379)
    os.kill(redis.pid, signal.SIGSTOP)
    paused: list[tuple[int, float, str, str]] = []
    try:
        deadline = time.monotonic() + PAUSE_S
        i = 0
        while time.monotonic() < deadline:
            # a prompt seen before (its KV and its answer are in Redis), and new ones
            tag = warm if i % 3 == 0 else uuid.uuid4().hex[:8]
            status, took, resp = _ask(http, tag, stream=i % 2 == 1, semantic=i % 4 == 2)
            paused.append((status, took, resp.headers.get("x-sluice-cache", ""),
                           resp.text[-200:]))
            i += 1
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    print(f"Redis paused {PAUSE_S:g} s: {len(paused)} requests, slowest "
          f"{max(t for _, t, _, _ in paused):.2f} s (baseline {baseline_s:.2f} s), cache "
          f"verdicts {sorted({c for _, _, c, _ in paused})}")
    assert len(paused) >= 3
    bad = [p for p in paused if p[0] != 200 or '"error"' in p[3]]
    assert not bad, bad
    assert max(t for _, t, _, _ in paused) < SLOWEST_S, paused
    assert all(c == "bypass" for _, _, c, _ in paused), paused  # not a hit, not a hang

    # back without a restart: the response cache answers again within seconds
    again = uuid.uuid4().hex[:8]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert _ask(http, again, stream=False)[0] == 200
        if _ask(http, again, stream=False)[2].headers["x-sluice-cache"] == "hit":
            break
        time.sleep(1)
    else:
        pytest.fail("the response cache did not recover within 30 s of Redis resuming")
