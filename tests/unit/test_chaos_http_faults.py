"""The HTTP fault proxy (loadtests.chaos.http_faults): injected statuses with Retry-After,
for N requests or until switched off, and pass-through (streamed) to a real upstream."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from loadtests.chaos.http_faults import HttpFaults


class _Upstream(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("x-upstream-path", self.path)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_it_answers_the_injected_status_then_passes_through() -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = _free_port()
    faults = HttpFaults(("127.0.0.1", port),
                        f"http://127.0.0.1:{upstream.server_address[1]}").start()
    url = f"http://127.0.0.1:{port}/v1/messages?x=1"
    try:
        passed = httpx.post(url, content=b"hello", timeout=10)
        assert passed.status_code == 200 and passed.text == "hello"
        assert passed.headers["x-upstream-path"] == "/v1/messages?x=1"

        faults.answer(429, retry_after_s=7, times=2)
        limited = [httpx.post(url, content=b"a", timeout=10) for _ in range(3)]
        assert [r.status_code for r in limited] == [429, 429, 200]
        assert limited[0].headers["retry-after"] == "7"
        assert limited[0].json()["error"]["code"] == 429

        faults.answer(503)
        assert {httpx.post(url, content=b"a", timeout=10).status_code
                for _ in range(3)} == {503}
        faults.pass_through()
        assert httpx.post(url, content=b"b", timeout=10).text == "b"
        assert faults.faulted == 5
    finally:
        faults.stop()
        upstream.shutdown()
