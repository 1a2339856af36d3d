"""The request body as bytes and as a JSON object, before any field means anything.

`read_body` reads it under a size limit (413, by Content-Length before a byte is read, or as
chunks arrive) and a time limit (408: a client that never finishes sending). `decode_json`
turns it into a JSON object, strictly: UTF-8 only, JSON numbers only, no lone surrogates,
no nesting the decoder cannot follow; each is a 400, never a 500 later in a cache key or
the tokenizer. `field_path` names a place in a body the way error messages do (`a.b[0]`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

from sluice.errors import BodyTimeout, InvalidRequest, PayloadTooLarge, field_path


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int,
                    timeout_s: float | None = None) -> bytes:
    """The body, refused with 413 once it is known to exceed `limit` (by its declared
    Content-Length before a byte is read, or as it streams in: chunked uploads), and with
    408 when it has not arrived whole within `timeout_s` (a slow-loris client)."""
    if timeout_s is None:
        return await _read(chunks, declared, limit)
    try:
        return await asyncio.wait_for(_read(chunks, declared, limit), timeout_s)
    except TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None


async def _read(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    # ASCII digits only ('²'.isdigit() is true), and no int() of a thousand-digit length
    if (declared is not None and declared.isascii() and declared.isdigit()
            and (len(declared) > 18 or int(declared) > limit)):
        shown = declared if len(declared) <= 18 else f"{declared[:18]}..."
        raise PayloadTooLarge(f"Request body of {shown} bytes exceeds the limit of "
                              f"{limit} bytes.")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_a_json_number(token: str) -> float:
    raise InvalidRequest(f"Request body is not valid JSON: {token} is not a JSON number.")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):  # 1e400
        raise InvalidRequest(f"Request body is not valid JSON: the number {token[:40]} is "
                             "out of range.")
    return value


def decode_json(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body; anything else is the client's mistake.

    Strictly UTF-8 (json.loads of bytes would take UTF-16/32 and let encoded surrogates
    through), strictly JSON numbers (no NaN, Infinity or overflow to infinity), and no lone
    surrogate escapes ("\\ud800"): text that cannot be encoded back to UTF-8 would fail
    later, in a cache key or the tokenizer, as a 500."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid UTF-8: {exc.reason} at byte "
                             f"{exc.start}.") from None
    try:
        body = json.loads(text, parse_constant=_not_a_json_number, parse_float=_finite)
    except RecursionError:  # json's C decoder recurses per nesting level
        raise InvalidRequest("Request body is nested too deeply to be a request.") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(text):
        where = _surrogate_at(body)
        if where is not None:
            field = field_path(where) or None
            raise InvalidRequest(f"Invalid value for '{field}': a lone UTF-16 surrogate "
                                 "escape is not text.", param=field)
    return body


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_at(body: Any) -> tuple[Any, ...] | None:
    """Where the first string holding a lone surrogate is (iteratively: bodies nest deep)."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    return (*path, key.encode("utf-8", "replace").decode())
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, i), item) for i, item in enumerate(value))
    return None


