"""Request headers that Ray Serve reads before Sluice's app runs, made safe in front of it.

Ray Serve's request-id middleware echoes the client's `x-request-id` into the response as it
came (a megabyte of it, or any byte uvicorn lets through), and Serve's direct-ingress
replica and proxy decode a few headers as strict UTF-8 (`x-request-id`,
`x-request-timeout-seconds`, `x-request-disconnect-disabled`, the session and multiplexed-
model headers): one byte over 0x7F there is a 500 before any Sluice code runs. This pure
ASGI middleware sits outside all of Serve's:

- an `x-request-id` that is not a sane id (1-128 of `A-Za-z0-9._:-`, the rule of
  `sluice.deployments.http.client_request_id`) is dropped, so Serve mints one, and that id
  is the one the response header, the answer's id, the ledger and the logs all carry;
- a header value that is not UTF-8 is a 400 naming the header, as OpenAI error JSON.

CR, LF and NUL in a header never get this far: uvicorn's parser answers 400 itself. It is
installed as Serve's HTTP proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, set
by `LocalStack.ray_environment`), which Serve applies to its proxy and to direct-ingress
replicas alike.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.middleware import Middleware

from sluice.errors import InvalidRequest

CALLBACK = "sluice.deployments.header_guard:middlewares"
REQUEST_ID = b"x-request-id"
SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _not_utf8(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name
    return None


class HeaderGuard:
    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = list(scope.get("headers") or ())
        kept = [(k, v) for k, v in headers if k != REQUEST_ID or SANE_ID.fullmatch(v)]
        bad = _not_utf8(kept)
        if bad is not None:
            await self._refuse(send, bad.decode("latin-1")[:64])
            return
        if len(kept) != len(headers):
            scope = {**scope, "headers": kept}
        await self._app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Any, header: str) -> None:
        err = InvalidRequest(f"The value of the {header} header is not UTF-8.", param=header)
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": err.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (REQUEST_ID, f"req-{uuid.uuid4().hex}".encode())]})
        await send({"type": "http.response.body", "body": body})


def middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback: the middlewares it wraps around its own."""
    return [Middleware(HeaderGuard)]
