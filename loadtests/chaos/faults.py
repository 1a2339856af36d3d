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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from loadtests.chaos.fault_proxy import FaultProxy
from loadtests.chaos.load import Traffic
from loadtests.chaos.outcomes import INGRESS_HEADER
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


def replica_id(proc: psutil.Process) -> str | None:
    """The Serve replica id of a replica actor process: from the Serve log file it holds
    open (`replica_<app>_<deployment>_<id>.log`), else (an engine replica, whose logging
    vLLM reconfigures) from its stderr, Ray's worker log, whose structured lines name the
    replica's actor (`SERVE_REPLICA::<app>#<deployment>#<id>`)."""
    try:
        for f in proc.open_files():
            found = re.search(rf"replica_{APP}_.+_([A-Za-z0-9]+)\.log$", f.path)
            if found:
                return found.group(1)
        err = os.readlink(f"/proc/{proc.pid}/fd/2")
        with open(err, "rb") as log:
            head = log.read(4 * 2**20).decode(errors="replace")
        found = re.search(rf"SERVE_REPLICA::{APP}#[^#\"]+#([A-Za-z0-9]+)", head)
        return found.group(1) if found else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return None


def _kill(proc: psutil.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)


class RedisUnderTest:
    """The stack's redis-server, which the harness starts, kills, pauses and restarts
    (the same port and data directory, so its append-only file is read back)."""

    def __init__(self, server: LocalRedisServer) -> None:
        self.server = server
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        if self.pid is None:
            return False
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

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
                 rng: random.Random, model: str = "small", hold_s: float = 3.0) -> None:
        self.serve_pid, self.redis, self.proxy = serve_pid, redis, proxy
        self.rng, self.model, self.hold_s = rng, model, hold_s
        self.traffic: Traffic | None = None  # the running load's (set by the runner)
        # Steps run here, one thread for the whole run: a redis-server it starts dies with
        # the thread that started it (LocalRedisServer's PR_SET_PDEATHSIG is per thread)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faults")

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def _victim(self, replicas: list[psutil.Process], header: str
                ) -> tuple[psutil.Process, str, str]:
        """The replica holding a stream in flight (waiting up to hold_s for one), else the
        one the load used last, else a seeded choice; with its id and how it was chosen."""
        ids = {p.pid: replica_id(p) for p in replicas}
        if self.traffic is not None:
            for why, busy in (("holding a stream", self.traffic.wait_in_flight(
                    header, self.hold_s)), ("answered last", self.traffic.busiest(header))):
                for proc in replicas:
                    if busy is not None and ids[proc.pid] == busy:
                        return proc, busy, why
        proc = self.rng.choice(replicas)
        return proc, ids[proc.pid] or f"? (ids {sorted(map(str, ids.values()))})", "seeded"

    def kill_engine(self) -> dict[str, Any]:
        """SIGKILL the vLLM engine process of one of the model's replicas."""
        replicas = [r for r in engine_replicas(self.serve_pid, self.model) if engine_cores(r)]
        if not replicas:
            raise RuntimeError(f"no engine process of {self.model} found")
        replica, ident, why = self._victim(replicas, "x-sluice-replica")
        engines = engine_cores(replica)
        for proc in engines:
            _kill(proc)
        return {"replica": ident, "chosen": why, "replica_pid": replica.pid,
                "engine_pids": [p.pid for p in engines], "replicas": len(replicas)}

    def kill_engine_replica(self) -> dict[str, Any]:
        """SIGKILL one of the model's replica actor processes (its engine is orphaned and
        ends when it notices)."""
        replicas = engine_replicas(self.serve_pid, self.model)
        if not replicas:
            raise RuntimeError(f"no replica of {self.model} found")
        victim, ident, why = self._victim(replicas, "x-sluice-replica")
        _kill(victim)
        return {"replica": ident, "chosen": why, "replica_pid": victim.pid,
                "replicas": len(replicas)}

    def kill_ingress(self) -> dict[str, Any]:
        replicas = ingress_replicas(self.serve_pid)
        if not replicas:
            raise RuntimeError("no ingress replica found")
        victim, ident, why = self._victim(replicas, INGRESS_HEADER)
        _kill(victim)
        return {"ingress": ident, "chosen": why, "ingress_pid": victim.pid,
                "replicas": len(replicas)}

    def redis_kill(self) -> dict[str, Any]:
        """SIGKILL redis-server; while it is down the proxy refuses connections, as the
        dead server's port would (not accept-then-reset)."""
        pid = self.redis.kill()
        self.proxy.refuse(True)
        return {"redis_pid": pid}

    def redis_start(self) -> dict[str, Any]:
        started = time.monotonic()
        self.redis.start()
        self.proxy.refuse(False)
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

    def heal(self) -> None:
        """Undo whatever a scenario left broken (a step that failed, a run cut short):
        the proxy passes through, Redis runs and is not paused."""
        if not self.redis.running:
            self.redis.start()
        else:
            self.redis.resume()
        self.proxy.pass_through()
