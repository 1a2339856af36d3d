"""A TCP proxy with faults you can switch at run time (toxiproxy and `tc netem` are not
available on these machines): added latency, every connection reset, new connections
refused, or plain pass-through.

It runs its own event loop in a daemon thread, so a harness whose own loop is busy sending
load (or a synchronous test) drives it with plain method calls:

    proxy = FaultProxy(("127.0.0.1", 6426), ("127.0.0.1", 6425)).start()
    proxy.set_latency(0.2)   # every chunk, each way, arrives 200 ms late
    proxy.reset()            # RST every open connection (clients see "connection reset")
    proxy.refuse(True)       # the listener closes: new connections are refused
    proxy.pass_through()     # no latency, listening again
    proxy.stop()

Latency delays each chunk by the same amount without slowing the byte rate (a reader queues
chunks with their arrival time; a writer sends each when it is due), so a pipelined Redis
conversation stays in order. A connection whose upstream cannot be reached is reset at once,
as a client of a dead server would see it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any

Address = tuple[str, int]
_CHUNK = 65536


def _hard_close(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a graceful FIN: what a crash looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in self.writers:
            _hard_close(writer)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Forwards `listen` to `target`; the fault controls are thread-safe."""

    def __init__(self, listen: Address, target: Address) -> None:
        self.listen, self.target = listen, target
        self._latency_s = 0.0
        self._refusing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self.counters = {"accepted": 0, "upstream_failed": 0, "reset": 0}

    # ---- life cycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError("fault proxy thread did not start")
        self._call(self._open(), timeout_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._close(reset=True), timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout_s)
            self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"redis://{self.listen[0]}:{self.listen[1]}"

    # ---- faults -------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk, in each direction, by `seconds` (0: none)."""
        self._latency_s = max(0.0, float(seconds))

    @property
    def latency_s(self) -> float:
        return self._latency_s

    def reset(self) -> int:
        """Reset every open connection; returns how many there were."""
        return int(self._call(self._reset_all()))

    def refuse(self, refusing: bool = True) -> None:
        """Stop listening (new connections are refused), or listen again."""
        self._refusing = refusing
        self._call(self._close(reset=False) if refusing else self._open())

    def pass_through(self) -> None:
        """No latency, listening: the proxy is invisible again."""
        self.set_latency(0.0)
        self.refuse(False)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # ---- inside the loop ----------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("fault proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _open(self) -> None:
        if self._server is None and not self._refusing:
            self._server = await asyncio.start_server(self._accept, *self.listen,
                                                      reuse_address=True)

    async def _close(self, reset: bool) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if reset:
            await self._reset_all()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.reset()
        self._links.difference_update(links)
        self.counters["reset"] += len(links)
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            await self._link(reader, writer)
        except asyncio.CancelledError:  # stop(): asyncio's server logs a handler's
            _hard_close(writer)  # cancellation as an error; it is the end of the run

    async def _link(self, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        self.counters["accepted"] += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=5.0)
        except (OSError, TimeoutError):
            self.counters["upstream_failed"] += 1
            _hard_close(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(reader, up_writer)),
                      asyncio.create_task(self._pump(up_reader, writer))]
        done, _ = await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        if link not in self._links:  # reset() took it already
            return
        self._links.discard(link)
        crashed = any(t.cancelled() or t.exception() is not None or not t.result()
                      for t in done)
        for task in link.tasks:
            task.cancel()
        for w in link.writers:  # one side ended: so does the other, the same way
            if crashed:
                _hard_close(w)
            else:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Copy one direction until EOF (True) or a failure either side (False); with
        latency, each chunk is sent when it is due."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while not sender.done():
                data = await reader.read(_CHUNK)
                queue.put_nowait((time.monotonic() + self._latency_s, data))
                if not data:
                    await sender
                    return True
            return False  # the sender failed: the far side is gone
        except OSError:
            return False
        finally:
            sender.cancel()
