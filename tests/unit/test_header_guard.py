"""The ASGI guard in front of Ray Serve's own middlewares: an insane x-request-id never
reaches Serve (which would echo it raw), a non-UTF-8 header value is a 400 (Serve would
fail decoding it: a 500), and it is what Serve's HTTP proxy callback returns."""

from __future__ import annotations

import asyncio
import importlib
import json

from starlette.middleware import Middleware

from sluice.deployments.header_guard import CALLBACK, HeaderGuard, middlewares
from sluice.deployments.local_stack import HEADER_GUARD


def _call(headers: list[tuple[bytes, bytes]]) -> tuple[list[dict], list[dict]]:
    """(scopes the app saw, messages sent)."""
    seen: list[dict] = []
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message) -> None:
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    asyncio.run(HeaderGuard(app)({"type": "http", "headers": headers}, receive, send))
    return seen, sent


def test_a_sane_request_id_and_other_headers_pass_untouched() -> None:
    headers = [(b"x-request-id", b"client-42:a.b_c"), (b"user-agent", "caf\u00e9".encode())]
    seen, _ = _call(headers)
    assert seen[0]["headers"] == headers


def test_an_insane_request_id_is_dropped_so_serve_mints_one() -> None:
    for value in (b"r" * 129, b"a b", b"<script>", "\u00e9".encode(), b"\xff\xfe"):
        seen, _ = _call([(b"x-request-id", value), (b"accept", b"*/*")])
        assert seen[0]["headers"] == [(b"accept", b"*/*")]


def test_a_header_that_is_not_utf8_is_a_400_naming_it() -> None:
    seen, sent = _call([(b"x-session-id", b"\xff\xfe"), (b"x-request-id", b"ok")])
    assert seen == []  # neither Serve nor the app ever sees it
    start, body = sent
    assert start["status"] == 400
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json" and headers[b"x-request-id"]
    error = json.loads(body["body"])["error"]
    assert error["param"] == "x-session-id" and error["type"] == "invalid_request_error"


def test_it_is_serves_http_proxy_callback() -> None:
    assert HEADER_GUARD == CALLBACK
    module, name = HEADER_GUARD.split(":")  # the form Serve's import_attr takes
    found = getattr(importlib.import_module(module), name)()
    assert found and all(isinstance(m, Middleware) for m in found)
    assert middlewares()[0].cls is HeaderGuard
