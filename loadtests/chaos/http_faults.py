"""An HTTP reverse proxy that can answer in the upstream's place: a status of your choice
(a provider's 429 with `Retry-After`, a 529, a 500) for the next N requests or all of them,
then plain pass-through again. The TCP fault proxy (`fault_proxy`) breaks connections; this
one breaks answers, which a TCP proxy cannot make.

It is Starlette served by uvicorn in a daemon thread (both already installed with vLLM), and
forwards with httpx, streaming the upstream's answer through, so a synchronous test drives
it with plain method calls:

    faults = HttpFaults(("127.0.0.1", 8866), "http://127.0.0.1:8864").start()
    faults.answer(429, retry_after_s=5, times=1)  # the next request: a 429, Retry-After: 5
    faults.pass_through()
    faults.stop()
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Address = tuple[str, int]
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
        "content-encoding"}


@dataclass
class _Fault:
    status: int
    retry_after_s: int | None
    left: int | None  # None: every request until pass_through()


class HttpFaults:
    def __init__(self, listen: Address, upstream: str) -> None:
        self._listen, self._upstream = listen, upstream.rstrip("/")
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self.faulted = 0  # requests answered with a fault
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ---- switches ------------------------------------------------------------------------
    def answer(self, status: int, retry_after_s: int | None = None,
               times: int | None = None) -> None:
        with self._lock:
            self._fault = _Fault(status, retry_after_s, times)

    def pass_through(self) -> None:
        with self._lock:
            self._fault = None

    def _take(self) -> _Fault | None:
        with self._lock:
            fault = self._fault
            if fault is None:
                return None
            if fault.left is not None:
                fault.left -= 1
                if fault.left <= 0:
                    self._fault = None
            self.faulted += 1
            return fault

    # ---- the proxy -----------------------------------------------------------------------
    async def _forward(self, request: Request) -> Response:
        fault = self._take()
        if fault is not None:
            headers = ({"retry-after": str(fault.retry_after_s)}
                       if fault.retry_after_s is not None else {})
            return JSONResponse({"error": {"message": f"injected {fault.status}",
                                           "type": "injected", "code": fault.status}},
                                status_code=fault.status, headers=headers)
        client: httpx.AsyncClient = request.app.state.client
        upstream = client.build_request(
            request.method, f"{self._upstream}{request.url.path}",
            params=request.query_params, content=await request.body(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in _HOP})
        response = await client.send(upstream, stream=True)
        return StreamingResponse(
            response.aiter_raw(), status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in _HOP},
            background=BackgroundTask(response.aclose))

    def start(self, ready_timeout_s: float = 30) -> HttpFaults:
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=methods)])
        app.state.client = httpx.AsyncClient(timeout=None)
        config = uvicorn.Config(app, host=self._listen[0], port=self._listen[1],
                                log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name="http-faults")
        self._thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP fault proxy on {self._listen} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
