"""The chaos harness's TCP fault proxy on loopback: pass-through, latency, reset, refusal;
and a real redis-server behind it (what the harness puts it in front of)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from loadtests.chaos.fault_proxy import FaultProxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", free_port()), ("127.0.0.1", echo)) as p:
        yield p


def _connect(p: FaultProxy) -> socket.socket:
    return socket.create_connection(p.listen, timeout=5)


def _round_trip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - started


def test_passes_bytes_through_both_ways(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        big = bytes(range(256)) * 4096  # 1 MiB, several chunks
        got, _ = _round_trip(sock, big)
        assert got == big
        assert proxy.open_connections == 1


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        _, plain = _round_trip(sock, b"ping")
        proxy.set_latency(0.15)
        got, slow = _round_trip(sock, b"ping")
        assert got == b"ping"
        assert slow >= 0.3 and slow > plain + 0.25  # 0.15 s there and 0.15 s back
        proxy.set_latency(0.0)
        _, fast = _round_trip(sock, b"ping")
        assert fast < slow - 0.2


def test_reset_breaks_open_connections_and_new_ones_work(proxy: FaultProxy) -> None:
    sock = _connect(proxy)
    assert _round_trip(sock, b"a")[0] == b"a"
    assert proxy.reset() == 1
    with pytest.raises(OSError):  # RST: reset by peer (or, at once, a clean EOF is a bug)
        sock.sendall(b"b")
        if not sock.recv(10):
            raise AssertionError("closed gracefully, not reset")
        sock.recv(10)
    sock.close()
    with _connect(proxy) as again:
        assert _round_trip(again, b"c")[0] == b"c"


def test_refuse_then_pass_through(proxy: FaultProxy) -> None:
    proxy.refuse(True)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    proxy.pass_through()
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"back")[0] == b"back"


def test_an_unreachable_upstream_resets_the_client() -> None:
    with FaultProxy(("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as p:
        with pytest.raises(OSError):  # reset: at connect, send or receive, but never data
            with _connect(p) as sock:
                sock.sendall(b"x")
                time.sleep(0.2)
                if not sock.recv(10):
                    raise OSError("closed")
        deadline = time.monotonic() + 5
        while p.counters["upstream_failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.counters["upstream_failed"] == 1


def test_a_redis_client_through_the_proxy_recovers_after_a_reset(redis_server) -> None:
    with FaultProxy(("127.0.0.1", free_port()), ("127.0.0.1", redis_server.port)) as p:
        client = redis.Redis(host="127.0.0.1", port=p.listen[1], socket_timeout=2)
        assert client.set("k", "v") and client.get("k") == b"v"
        p.reset()
        # redis-py reconnects on the next command (its default retry), the data is there
        assert client.get("k") == b"v"
        p.set_latency(0.2)
        started = time.monotonic()
        assert client.get("k") == b"v"
        assert time.monotonic() - started >= 0.4
        client.close()
