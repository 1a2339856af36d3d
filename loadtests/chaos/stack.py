"""The stack a chaos run breaks: its own `sluice serve`, Redis and fault proxy.

`sluice serve` runs as a subprocess (as the admission benchmark and the multi-ingress test
run it) with a profile written for the run: two ingress replicas behind Serve's HTTP proxy
(`ingress.transport: proxy`), `small` as two engine replicas, no cascade, no semantic cache
(an embedding per request costs a 2-core machine too much), a generous rate limit and
budget so the rate-limit counters and budget holds live in Redis too, and the profile's
`redis_url` (response cache, key store, ledger, rate limits, budgets: every Redis client of
the ingress) pointed at the fault proxy, which forwards to a redis-server the harness owns,
so it can kill, pause and restart it. The proxy passes traffic through untouched except
while the proxy scenario runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.chaos.fault_proxy import FaultProxy
from loadtests.chaos.faults import RedisUnderTest, engine_cores, engine_replicas
from sluice.cache_tier.redis_server import LocalRedisServer

ROOT = Path(__file__).resolve().parents[2]
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM (which `sluice serve` handles by stopping its
    stack) if the harness dies without stopping it (Linux's PR_SET_PDEATHSIG)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)


@dataclass(frozen=True)
class StackSettings:
    http_port: int = 8840
    redis_port: int = 6425  # the real redis-server
    proxy_port: int = 6426  # what the ingress is told Redis is
    engine_replicas: int = 2
    ingress_replicas: int = 2
    model: str = "small"
    first_token_timeout_s: float = 15.0  # the platform's own bound, under the client's
    ready_timeout_s: float = 900.0


def profile(settings: StackSettings, redis_url: str) -> dict[str, Any]:
    p = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    p.pop("routing", None)  # no cascade: `auto` is small
    p["catalog"] = str(ROOT / "platform/catalog.yaml")
    p["redis_url"] = redis_url
    p["ingress"] = {**p["ingress"], "transport": "proxy",
                    "num_replicas": settings.ingress_replicas,
                    "first_token_timeout_s": settings.first_token_timeout_s}
    p["dashboard"] = {"enabled": False}
    p["semantic_cache"] = {"enabled": False}
    p["models"] = {**p["models"], settings.model: {
        "min_replicas": settings.engine_replicas, "max_replicas": settings.engine_replicas}}
    p["accounting"] = {
        "budgets": [{"scope": "tenant", "id": "default", "daily_usd": 1e6}],
        "rate_limits": {"limits": [{"scope": "key", "id": "*",
                                    "requests_per_minute": 1_000_000}]}}
    return p


def _say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


class ChaosStack:
    """Owns the redis-server, the proxy and the `sluice serve` process; stop() ends all."""

    def __init__(self, run_dir: Path, settings: StackSettings = StackSettings(),
                 progress: Callable[[str], None] = _say) -> None:
        self.run_dir, self.settings, self._say = run_dir, settings, progress
        self.redis = RedisUnderTest(LocalRedisServer(run_dir / "redis", settings.redis_port))
        self.proxy = FaultProxy(("127.0.0.1", settings.proxy_port),
                                ("127.0.0.1", settings.redis_port))
        self.log_path = run_dir / "serve.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def redis_url(self) -> str:
        """The real Redis, for the harness's own reads (the ledger check)."""
        return self.redis.server.url

    @property
    def serve_pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> ChaosStack:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.redis.start()
            self.proxy.start()
            path = self.run_dir / "profile.yaml"
            path.write_text(yaml.safe_dump(profile(self.settings, self.proxy.url)))
            s = self.settings
            self._say(f"starting sluice serve on :{s.http_port} ({s.ingress_replicas} "
                      f"ingress, {s.model} x{s.engine_replicas}; Redis :{s.redis_port} "
                      f"behind the fault proxy :{s.proxy_port}); log {self.log_path}")
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "sluice.cli", "serve", "--profile", str(path),
                     "--port", str(s.http_port), "--redis-port", str(s.redis_port),
                     "--no-dashboard"],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=_end_with_parent)  # noqa: PLW1509
            started = time.monotonic()
            self.wait_healthy(s.ready_timeout_s)
            self._say(f"stack healthy after {time.monotonic() - started:.0f} s")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("sluice serve exited:\n" + self.log_tail())

    def _ready(self) -> bool:
        """/readyz is 200 and Serve runs every replica of the model (a replaced replica
        counts once it is RUNNING), and each has its engine process."""
        try:
            r = httpx.get(f"{self.base_url}/readyz", timeout=10)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        n = self.settings.engine_replicas
        if int((r.json().get("replicas") or {}).get(self.settings.model, 0)) < n:
            return False
        replicas = engine_replicas(self.serve_pid, self.settings.model)
        return sum(1 for rep in replicas if engine_cores(rep)) >= n

    def ingresses_answering(self, probes: int = 16) -> set[str]:
        """Ingress replicas that answered a concurrent round of /healthz (Serve's proxy
        spreads concurrent requests; one at a time it keeps picking the same replica)."""
        def one(_: int) -> str:
            try:
                r = httpx.get(f"{self.base_url}/healthz", timeout=10)
            except httpx.HTTPError:
                return ""
            return r.headers.get("x-sluice-ingress", "") if r.status_code == 200 else ""

        with ThreadPoolExecutor(max_workers=probes) as pool:
            return {name for name in pool.map(one, range(probes)) if name}

    def wait_healthy(self, timeout_s: float = 600.0) -> float:
        """Bounded wait until every engine and ingress replica serves again (after a
        scenario that killed one, Serve starts a replacement); seconds waited."""
        started = time.monotonic()
        deadline = started + timeout_s
        want = self.settings.ingress_replicas
        while True:
            self._alive()
            if self._ready() and len(self.ingresses_answering()) >= want:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack not healthy within {timeout_s:.0f} s:\n"
                                   + self.log_tail())
            time.sleep(2)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._say("stopping sluice serve")
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self.proxy.stop()
        self.redis.stop()

    def __enter__(self) -> ChaosStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
