"""The chaos harness's Redis faults on a real redis-server behind the fault proxy: killed
(the proxy refuses, as a dead port does), restarted with its data, paused and resumed,
healed; and the engine/ingress victim lookup on processes of this test's own."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import uuid
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from loadtests.chaos.fault_proxy import FaultProxy
from loadtests.chaos.faults import Faults, RedisUnderTest, descendants
from loadtests.chaos.load import Traffic
from loadtests.chaos.outcomes import Observation
from sluice.cache_tier.redis_server import LocalRedisServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def faults(tmp_path: Path):
    server = RedisUnderTest(LocalRedisServer(tmp_path / "redis", free_port()))
    server.start()
    proxy = FaultProxy(("127.0.0.1", free_port()), ("127.0.0.1", server.server.port)).start()
    f = Faults(0, server, proxy, random.Random(0))
    yield f
    f.close()
    proxy.stop()
    server.stop()


def _client(f: Faults) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=f.proxy.listen[1], socket_timeout=1,
                       socket_connect_timeout=1, retry=Retry(NoBackoff(), 1))


def test_kill_refuses_then_restart_keeps_the_data(faults: Faults) -> None:
    client = _client(faults)
    client.set("k", "v")
    faults.executor.submit(faults.redis_kill).result(10)
    assert not faults.redis.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(faults.proxy.listen, timeout=1)
    faults.executor.submit(faults.redis_start).result(10)
    # started from the long-lived step thread: it outlives the step (a redis-server
    # started from a short-lived thread is ended with that thread by PR_SET_PDEATHSIG)
    threading.Thread(target=lambda: None).start()
    time.sleep(0.5)
    assert faults.redis.running
    assert client.get("k") == b"v"  # the append-only file was read back
    client.close()


def test_pause_resume_and_heal(faults: Faults) -> None:
    client = _client(faults)
    faults.redis_pause()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    faults.heal()  # resumes a paused server
    assert client.ping()
    faults.redis_kill()
    faults.proxy_latency(0.3)
    faults.heal()  # starts a dead one, the proxy passes through
    assert faults.redis.running and faults.proxy.latency_s == 0
    assert client.ping()
    client.close()


def test_the_victim_is_the_replica_holding_a_stream(monkeypatch) -> None:
    # A token of this test's own: in `make test` a live stack's Ray workers (real
    # ServeReplica processes) are descendants of this pytest process too.
    token = f"victim-test-{uuid.uuid4().hex}"
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                               f"ServeReplica:sluice:SluiceIngress-{i}", token]) for i in range(2)]
    try:
        found = descendants(os.getpid(), rf"ServeReplica:sluice:SluiceIngress.*{token}")
        assert [p.pid for p in found] == [p.pid for p in procs]  # oldest first
        traffic = Traffic()
        faults = Faults(0, None, None, random.Random(3), hold_s=0.2)  # type: ignore[arg-type]
        faults.traffic = traffic
        ids = {procs[0].pid: "aaa", procs[1].pid: "bbb"}
        monkeypatch.setattr("loadtests.chaos.faults.replica_id", lambda p: ids.get(p.pid))
        try:
            busy = Observation(0, "r", True, 0.0, headers={"x-sluice-ingress": "bbb"})
            traffic.started(busy)
            proc, ident, why = faults._victim(found, "x-sluice-ingress")
            assert (proc.pid, ident, why) == (procs[1].pid, "bbb", "holding a stream")
            traffic.ended(busy)
            proc, ident, why = faults._victim(found, "x-sluice-ingress")
            assert (ident, why) == ("bbb", "answered last")
            traffic.finished.clear()
            _, _, why = faults._victim(found, "x-sluice-ingress")
            assert why == "seeded"
        finally:
            faults.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
