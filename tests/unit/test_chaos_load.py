"""The chaos load generator against a small local HTTP server that answers each way a
platform can (an answer, a stream, a 503, a stream cut short, a hang, a dropped
connection): every request is sent at its time and observed as it happened."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from loadtests.chaos.load import LoadSpec, PlannedRequest, run
from loadtests.chaos.outcomes import (
    HUNG,
    OK,
    OTHER,
    RETRIABLE,
    TRUNCATED,
    classify_all,
    summarize,
)

CHUNK = 'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
ERROR = 'data: {"error":{"message":"engine died","type":"service_unavailable","code":503}}\n\n'


async def _chat(request: Request) -> Response:
    body = await request.json()
    how = body["messages"][0]["content"]
    ingress = {"x-sluice-ingress": "i1", "x-sluice-retries": "1" if how == "retried" else "0"}

    async def events(parts: list[str], pause: float = 0.0):
        for part in parts:
            yield part
            await asyncio.sleep(pause)

    if how in ("ok", "retried"):
        return JSONResponse({"choices": [{"message": {"content": "x"}}]}, headers=ingress)
    if how == "stream":
        return StreamingResponse(events([CHUNK, CHUNK, "data: [DONE]\n\n"]), headers=ingress)
    if how == "stream-error":
        return StreamingResponse(events([CHUNK, ERROR, "data: [DONE]\n\n"]), headers=ingress)
    if how == "stream-cut":
        return StreamingResponse(events([CHUNK, CHUNK]), headers=ingress)
    if how == "503":
        return JSONResponse({"error": {"message": "down", "code": "x"}}, status_code=503,
                            headers=ingress | {"retry-after": "1"})
    if how == "500":
        return JSONResponse({"error": {"message": "bug"}}, status_code=500, headers=ingress)
    if how == "hang":
        await asyncio.sleep(30)
    if how == "stream-hang":
        return StreamingResponse(events([CHUNK] * 100, pause=1.0), headers=ingress)
    raise RuntimeError("drop")  # uvicorn answers 500 (no ingress header)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    port = _port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = srv.force_exit = True
    thread.join(5)


def _req(i: int, how: str, stream: bool = False) -> PlannedRequest:
    body = {"model": "small", "messages": [{"role": "user", "content": how}]}
    return PlannedRequest(i, i * 0.05, f"t-{i}", stream, body)


def test_every_outcome_is_observed_at_its_time(server: str) -> None:
    cases = [("ok", False, OK), ("retried", False, OK), ("stream", True, OK),
             ("stream-error", True, RETRIABLE), ("stream-cut", True, TRUNCATED),
             ("503", False, RETRIABLE), ("500", False, OTHER), ("hang", False, HUNG),
             ("stream-hang", True, HUNG), ("drop", False, OTHER)]
    requests = [_req(i, how, stream) for i, (how, stream, _) in enumerate(cases)]
    spec = LoadSpec(rate=20, duration_s=0.5, client_timeout_s=1.5)
    started = time.monotonic()
    observations = asyncio.run(run(server, requests, spec, started))
    elapsed = time.monotonic() - started
    assert elapsed < 15  # not the 30 s the server would hang for
    classify_all(observations)
    hung = [o for o in observations if o.timed_out]
    assert hung and all(o.ended_s - o.sent_s < 4 for o in hung)  # the 1.5 s hard bound
    assert [o.kind for o in observations] == [kind for _, _, kind in cases], [
        (o.request_id, o.kind, o.status, o.error) for o in observations]
    # open loop: sent at their planned times, whatever the earlier ones did: the requests
    # after a hanging one left before it ended (a closed loop would have waited)
    first_hang = observations[7]
    assert all(o.sent_s < first_hang.ended_s for o in observations[8:])
    assert all(o.sent_s >= r.at_s for o, r in zip(observations, requests))
    counts = summarize(observations)
    assert counts["retried"] == 1 and counts["hung"] == 2
    assert observations[3].chunks == 1 and observations[3].done and observations[3].error_event
    assert observations[5].error.startswith("x: down")
    assert not observations[9].accepted  # no ingress header on uvicorn's own 500
