"""The faults a scenario injects, and how each finds its victim.

Every process of a stack descends from its `sluice serve` process (Ray's head processes,
the raylet's workers, the engines under each replica actor), so victims are looked for
among that process's descendants only: another stack on the same machine (the test
session's, say) is never touched. A replica actor's command line names its deployment
(`ray::ServeReplica:sluice:SluiceLLMServer:small`, `...:SluiceIngress`); vLLM's engine runs
as a child of its replica (`VLLM::EngineCore`). The victim among several is drawn from a
seeded generator over the processes ordered by start time, so a seed picks "the first" or
"the second" replica whatever their pids.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from typing import Any

import psutil

from loadtests.chaos.fault_proxy import FaultProxy
from sluice.cache_tier.redis_server import LocalRedisServer

APP = "sluice"


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def descendants(root_pid: int, pattern: str) -> list[psutil.Process]:
    """Live descendants of root_pid whose command line matches `pattern`, oldest first."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in children:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and re.search(pattern, _cmdline(proc)):
                found.append((proc.create_time(), proc.pid, proc))
        except psutil.NoSuchProcess:
            continue
    return [p for _, _, p in sorted(found, key=lambda x: (x[0], x[1]))]


def replica_pattern(deployment: str) -> str:
    return rf"ServeReplica:{APP}:{deployment}\b"


def engine_replicas(root_pid: int, model: str) -> list[psutil.Process]:
    return descendants(root_pid, replica_pattern(rf"\w*LLMServer:{re.escape(model)}"))


def engine_cores(replica: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in replica.children(recursive=True) if "EngineCore" in _cmdline(c)]
    except psutil.NoSuchProcess:
        return []


def ingress_replicas(root_pid: int) -> list[psutil.Process]:
    return descendants(root_pid, replica_pattern("SluiceIngress"))


def _kill(proc: psutil.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)


class RedisUnderTest:
    """The stack's redis-server, which the harness starts, kills, pauses and restarts
    (the same port and data directory, so its append-only file is read back)."""

    def __init__(self, server: LocalRedisServer) -> None:
        self.server = server
        self.pid: int | None = None

    def start(self) -> None:
        self.server.start()
        import redis

        client = redis.Redis(port=self.server.port, socket_timeout=5)
        try:
            self.pid = int(client.info("server")["process_id"])
        finally:
            client.close()

    def kill(self) -> int:
        """SIGKILL: no shutdown, no last write (what a crash or an OOM kill does)."""
        assert self.pid is not None
        pid, self.pid = self.pid, None
        os.kill(pid, signal.SIGKILL)
        try:
            psutil.Process(pid).wait(timeout=10)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass
        return pid

    def pause(self) -> int:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)
        return self.pid

    def resume(self) -> int:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)
        return self.pid

    def stop(self) -> None:
        if self.pid is not None:
            try:  # a paused server ignores SIGTERM until it runs again
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.server.stop()


class Faults:
    """The fault actions of one stack; each returns what it did (for the results)."""

    def __init__(self, serve_pid: int, redis: RedisUnderTest, proxy: FaultProxy,
                 rng: random.Random, model: str = "small") -> None:
        self.serve_pid, self.redis, self.proxy = serve_pid, redis, proxy
        self.rng, self.model = rng, model

    def kill_engine(self) -> dict[str, Any]:
        """SIGKILL the vLLM engine process of one of the model's replicas."""
        replicas = engine_replicas(self.serve_pid, self.model)
        with_engine = [(r, engine_cores(r)) for r in replicas]
        with_engine = [(r, e) for r, e in with_engine if e]
        if not with_engine:
            raise RuntimeError(f"no engine process of {self.model} found")
        replica, engines = self.rng.choice(with_engine)
        for proc in engines:
            _kill(proc)
        return {"replica_pid": replica.pid, "engine_pids": [p.pid for p in engines],
                "replicas": len(replicas)}

    def kill_engine_replica(self) -> dict[str, Any]:
        """SIGKILL one of the model's replica actor processes (its engine is orphaned and
        ends when it notices)."""
        replicas = engine_replicas(self.serve_pid, self.model)
        if not replicas:
            raise RuntimeError(f"no replica of {self.model} found")
        victim = self.rng.choice(replicas)
        _kill(victim)
        return {"replica_pid": victim.pid, "replicas": len(replicas)}

    def kill_ingress(self) -> dict[str, Any]:
        replicas = ingress_replicas(self.serve_pid)
        if not replicas:
            raise RuntimeError("no ingress replica found")
        victim = self.rng.choice(replicas)
        _kill(victim)
        return {"ingress_pid": victim.pid, "replicas": len(replicas)}

    def redis_kill(self) -> dict[str, Any]:
        return {"redis_pid": self.redis.kill()}

    def redis_start(self) -> dict[str, Any]:
        started = time.monotonic()
        self.redis.start()
        return {"redis_pid": self.redis.pid, "start_s": round(time.monotonic() - started, 2)}

    def redis_pause(self) -> dict[str, Any]:
        return {"redis_pid": self.redis.pause()}

    def redis_resume(self) -> dict[str, Any]:
        return {"redis_pid": self.redis.resume()}

    def proxy_latency(self, seconds: float) -> dict[str, Any]:
        self.proxy.set_latency(seconds)
        return {"latency_s": seconds, "open_connections": self.proxy.open_connections}

    def proxy_reset(self) -> dict[str, Any]:
        self.proxy.set_latency(0.0)
        return {"reset_connections": self.proxy.reset()}

    def proxy_refuse(self) -> dict[str, Any]:
        self.proxy.refuse(True)
        return {"refusing": True, "reset_connections": self.proxy.reset()}

    def proxy_pass(self) -> dict[str, Any]:
        self.proxy.pass_through()
        return {"pass_through": True}
