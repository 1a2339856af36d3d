"""One ingress replica's metrics on a listening socket of its own, for Prometheus to scrape.

Behind Serve's proxy, `GET /metrics` on the API port reads whichever ingress replica the
proxy picked, so a scrape's counters jump between replicas. Here each replica serves its own
exposition at `http://<node address>:<port>/metrics`, and registers that address for
discovery (`sluice.observability.scrape_targets`).

Served by asyncio on the replica's own event loop, not by prometheus_client's threaded
server: the collectors read the platform's objects (caches, cascade policies, the
accountant), which only that loop touches. The HTTP is the least Prometheus needs: one
`GET` (or `HEAD`) of the path per connection, answered with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sluice.observability.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)
Render = Callable[[], Awaitable[bytes]]
MAX_HEAD_BYTES = 16 * 1024  # a scrape's request line and headers are well under 1 KiB
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error"}


def address_of(host: str, port: int) -> str:
    """`host:port` as a scrape target names it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsEndpoint:
    """Serves `render()` at `path` on host:port (port 0: one the system picks)."""

    def __init__(self, render: Render, host: str, port: int = 0, *, path: str = "/metrics",
                 content_type: str = CONTENT_TYPE, read_timeout_s: float = 10.0) -> None:
        self._render, self._host, self._port = render, host, port
        self._path, self._content_type = path, content_type
        self._read_timeout_s = read_timeout_s
        self._server: asyncio.Server | None = None
        self.address: str | None = None  # host:port once listening

    async def start(self) -> str:
        """Listen (on the running loop); the address it listens on. Raises OSError when
        the port is taken."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self._host, self._port,
                                                      limit=MAX_HEAD_BYTES)
            port = self._server.sockets[0].getsockname()[1]
            self.address = address_of(self._host, int(port))
        assert self.address is not None
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await asyncio.wait_for(self._server.wait_closed(), self._read_timeout_s)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                              self._read_timeout_s)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return  # a client that went away, sent too much, or nothing: just close
            method, status, body = await self._answer(head)
            headers = (f"HTTP/1.1 {status} {REASONS[status]}\r\n"
                       f"Content-Type: {self._content_type if status == 200 else 'text/plain'}"
                       f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                       + ("Allow: GET, HEAD\r\n" if status == 405 else "") + "\r\n")
            writer.write(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), self._read_timeout_s)
        except (ConnectionError, TimeoutError):
            pass  # the scraper hung up, or stopped reading
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self._read_timeout_s)

    async def _answer(self, head: bytes) -> tuple[str, int, bytes]:
        """(method, status, body) for one request's head."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "", 400, b"not an HTTP/1.x request\n"
        method, target = parts[0], parts[1]
        if target.split("?", 1)[0] != self._path:
            return method, 404, f"metrics are at {self._path}\n".encode()
        if method not in ("GET", "HEAD"):
            return method, 405, b"GET or HEAD\n"
        try:
            return method, 200, await self._render()
        except Exception:  # this socket's edge (its last resort): a 500; serving goes on
            log.exception("rendering the metrics failed")
            return method, 500, b"rendering the metrics failed; see the replica's log\n"
