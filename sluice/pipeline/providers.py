"""Hosted models: a catalog model whose `provider` is an OpenAI-compatible API or
Anthropic's Messages API, called over HTTP instead of through an engine deployment.

The call has the shape of an engine call (`EngineStream`: the first item awaited before any
byte goes to the client, then the rest), so everything after it (caches, metering, pricing,
the ledger, traces, failover) treats a provider's answer as any other. The request is the
one the client sent, parsed and bounded by the ingress, with the model set to the
provider's id. One pooled `httpx.AsyncClient` per provider model and ingress replica
(`max_connections` bounds its concurrency), never a blocking call.

A provider's refusal before the first byte is named as Sluice names an engine's: its 4xx as
the same 4xx (the client's mistake, with the provider's message), its 429, 5xx, timeouts and
connection errors as Sluice's retriable 503 (`provider_unavailable`, with the provider's
Retry-After where it sent one), which the failover chain reads (`sluice.pipeline.failover`).
A stream whose first event is an error (OpenAI's `data: {"error": ...}`, Anthropic's `error`
event such as `overloaded_error`) is named the same way, by the status it carries, before any
byte went out: its 429 or 5xx fails over like an error status would. The first event awaited
is output: Anthropic's `message_start` comes before any text, so its role chunk is held until
the first content (`anthropic_wire.StreamTranslator`), and a provider that stalls after it
is failed over at the first-token bound rather than cut at the stall bound mid-answer.
A stream that breaks after it started ends with an error event, as an engine's does.

Behind Anthropic's API (`api: anthropic`) a chat request is translated into a Messages
request and the answer, whole or streamed, back into a chat completion
(`sluice.pipeline.anthropic_wire`), so the rest of the pipeline sees OpenAI's shapes either
way; such a model serves no `/v1/completions` (a 400 naming `model`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from sluice import sse
from sluice.errors import InvalidRequest, SluiceError, Unavailable, from_engine_error
from sluice.pipeline import anthropic_wire
from sluice.pipeline.engines import SUBJECT_ATTR, EngineStream
from sluice.schema.catalog import ProviderEndpoint

log = logging.getLogger(__name__)
PATHS = {"chat": "/chat/completions", "completions": "/completions"}
# fields of Sluice's parsed request that are not the provider's business
# Sluice's own fields on the request, never sent to a provider (the rollout subject names
# the caller's key and tenant)
_PRIVATE = ("request_id", "sluice_avoid_replicas", SUBJECT_ATTR)


class _Whole:
    """A non-streamed answer in the shape EngineStream.whole() reads."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self._data


RATE_LIMITED = "provider_rate_limited"  # its 429: the failover chain puts it aside that long


def unavailable(model: str, why: str, retry_after_s: int = 1,
                code: str = "provider_unavailable") -> Unavailable:
    return Unavailable(f"Model '{model}' is not available right now ({why}); retry shortly.",
                       code=code, retry_after_s=max(1, retry_after_s))


def _retry_after(response: httpx.Response) -> int:
    try:
        return max(1, int(float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1


def _named(model: str, status: int, error: Any, retry_after_s: int, said: str
           ) -> SluiceError:
    """A provider's error of `status` as Sluice's: 429 and 5xx (Anthropic's 529 overloaded
    among them) and 408 are retriable (the failover chain's next model answers); any other
    4xx is the client's mistake, with the provider's message."""
    message = str(error.get("message") if isinstance(error, dict) else error or "")[:500]
    if status in (408, 429) or status >= 500:
        return unavailable(model, f"{said} {status}" + (f": {message}" if message else ""),
                           retry_after_s,
                           RATE_LIMITED if status == 429 else "provider_unavailable")
    param = error.get("param") if isinstance(error, dict) else None
    return from_engine_error(status, message or f"The provider refused the request ({status}).",
                             None, param)


def refusal(model: str, response: httpx.Response, body: bytes) -> SluiceError:
    """A provider's error status as Sluice's error."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    return _named(model, response.status_code, error, _retry_after(response),
                  "its provider answered")


# an in-stream error's type (or string code) as its status, where it carries no number:
# Anthropic's types (`anthropic_wire.ERROR_STATUS`), OpenAI's, and Sluice's own
_ERROR_STATUS = {**anthropic_wire.ERROR_STATUS, "server_error": 500,
                 "service_unavailable": 503, "rate_limit_exceeded": 429,
                 "insufficient_quota": 429, "requests": 429, "tokens": 429}


def _status(error: dict[str, Any]) -> int:
    """The status an in-stream error stands for: its numeric `code` (vLLM's, and the one
    `anthropic_wire` gives), else what its code or type names; unknown: 500 (the provider
    failed; a client's mistake names itself)."""
    code = error.get("code")
    if (isinstance(code, int) and not isinstance(code, bool)) or (
            isinstance(code, str) and code.isdigit()):
        # a code that is no HTTP error status (0, 1, 200, ...) is the provider failing
        return int(code) if 400 <= int(code) <= 599 else 500
    for name in (code, error.get("type")):
        if isinstance(name, str) and name in _ERROR_STATUS:
            return _ERROR_STATUS[name]
    return 500


def stream_refusal(model: str, response: httpx.Response, first: str) -> SluiceError | None:
    """A stream whose first event is an error (`data: {"error": ...}`, or Anthropic's
    `error` event as `anthropic_wire` translates it) as the error of its status, as if the
    provider had answered with that status: nothing reached the client yet."""
    if not sse.is_error(first):
        return None
    error = (sse.payload(first) or {}).get("error")
    if not isinstance(error, dict):
        error = {"message": str(error or "")}
    return _named(model, _status(error), error, _retry_after(response),
                  "its provider's stream began with an error")


class _Events:
    """The rest of a provider's stream, one SSE event per item; closing it (the reader
    left, or a stall) closes the connection, which is how an HTTP call is cancelled. The
    response is closed once the stream ended too, so its connection goes back to the pool."""

    def __init__(self, model: str, response: httpx.Response) -> None:
        self._model, self._response = model, response
        self._lines = response.aiter_lines()
        self._ready: list[str] = []
        self._done = False
        self._started = False  # an item was returned (before it, a failure is the call's)

    def __aiter__(self) -> _Events:
        return self

    def _convert(self, data: str) -> list[str]:
        """One `data:` line of the provider's stream as the chunks it stands for."""
        return [f"{sse.DATA}{data}\n\n"]

    async def __anext__(self) -> str:
        while not self._ready:
            if self._done:
                await self._response.aclose()
                raise StopAsyncIteration
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                self._done = True
                continue
            except httpx.HTTPError as exc:  # the connection broke mid-stream: say so, end
                if not self._started:
                    raise  # before any item: the call failed (`ProviderEngine.call`)
                self._done = True
                log.warning("model %s: its provider's stream broke: %r", self._model, exc)
                self._ready.append(sse.encode(unavailable(
                    self._model, f"its provider's stream broke: {type(exc).__name__}").body()))
                continue
            if line.startswith("data:"):
                self._ready.extend(self._convert(line[5:].strip()))
        chunk = self._ready.pop(0)
        self._started = True
        if sse.ends(chunk):
            self._done, self._ready = True, []
        return chunk

    def cancel(self) -> None:
        self._done = True
        asyncio.ensure_future(self._response.aclose())


class _AnthropicEvents(_Events):
    """Anthropic's stream read as chat completion chunks: each of its events stands for
    none, one or a few chunks (`anthropic_wire.StreamTranslator`)."""

    def __init__(self, model: str, response: httpx.Response) -> None:
        super().__init__(model, response)
        self._translator = anthropic_wire.StreamTranslator()

    def _convert(self, data: str) -> list[str]:
        event = sse.payload(f"{sse.DATA}{data}")
        return list(self._translator.translate(event)) if event is not None else []


class ProviderEngine:
    """One hosted model: `call` has the contract of `Engines.call` for a local model."""

    def __init__(self, name: str, endpoint: ProviderEndpoint,
                 environ: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name, self.endpoint = name, endpoint
        env = os.environ if environ is None else environ
        key = env.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if endpoint.api_key_env and not key:
            log.warning("model %s: %s is not set; calling its provider without a key", name,
                        endpoint.api_key_env)
        headers: dict[str, str] = {}
        if key:
            headers.update({"x-api-key": key} if endpoint.key_header == "x-api-key"
                           else {"authorization": f"Bearer {key}"})
        if endpoint.api == "anthropic":
            headers["anthropic-version"] = anthropic_wire.VERSION
        limits = httpx.Limits(max_connections=endpoint.max_connections,
                              max_keepalive_connections=endpoint.max_connections)
        # every bound is Sluice's own: the start of a call within its first-token (a stream)
        # or request (not streamed) bound, a stream's gaps within its stall bound
        self._client = httpx.AsyncClient(base_url=endpoint.base_url.rstrip("/"),
                                         headers=headers, limits=limits,
                                         timeout=httpx.Timeout(None), transport=transport)
        self.replica = f"provider:{urlsplit(endpoint.base_url).netloc}"

    def body(self, endpoint: str, request: Any) -> dict[str, Any]:
        data = request.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        for key in _PRIVATE:
            data.pop(key, None)
        if self.endpoint.api == "anthropic":
            if endpoint != "chat":
                raise InvalidRequest(f"Model '{self.name}' is served by Anthropic's Messages "
                                     "API and answers chat requests only "
                                     "(/v1/chat/completions, /v1/messages).", param="model")
            return anthropic_wire.messages_request(data, self.endpoint.model,
                                                   self.endpoint.default_max_tokens)
        data["model"] = self.endpoint.model
        return data

    async def call(self, endpoint: str, request: Any) -> EngineStream:
        body = self.body(endpoint, request)
        streamed = bool(body.get("stream"))
        bound = (self.endpoint.first_token_timeout_s if streamed
                 else self.endpoint.request_timeout_s)
        try:
            return await asyncio.wait_for(self._start(endpoint, body, streamed), bound)
        except TimeoutError:
            raise unavailable(self.name, f"its provider did not answer within {bound:g} s"
                              ) from None
        except httpx.HTTPError as exc:
            raise unavailable(self.name, f"its provider could not be reached: "
                              f"{type(exc).__name__}") from None

    async def _start(self, endpoint: str, body: dict[str, Any], streamed: bool
                     ) -> EngineStream:
        anthropic = self.endpoint.api == "anthropic"
        path = "/messages" if anthropic else PATHS[endpoint]
        request = self._client.build_request("POST", path, json=body)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code >= 400:
                raise refusal(self.name, response, await response.aread())
            if not streamed:
                data = json.loads(await response.aread())
                if anthropic:
                    data = anthropic_wire.chat_response(data)
                return EngineStream(self.name, _Whole(data), _nothing(), self.replica)
            events = (_AnthropicEvents if anthropic else _Events)(self.name, response)
            try:  # within the first-token bound: real output (or the error) first
                first = await events.__anext__()
            except StopAsyncIteration:
                raise unavailable(self.name, "its provider's stream ended before any "
                                  "output") from None
            error = stream_refusal(self.name, response, first)
            if error is not None:
                raise error
        except BaseException:
            await response.aclose()
            raise
        return EngineStream(self.name, first, events, self.replica,
                            stall_timeout_s=self.endpoint.stall_timeout_s)

    async def ready(self, timeout_s: float) -> str:
        """`ready` if its API lists models (`GET /models`, with its key, as OpenAI's and
        Anthropic's both serve) within `timeout_s`, else `unavailable (why)`."""
        try:
            response = await asyncio.wait_for(self._client.get("/models"), timeout_s)
        except TimeoutError:
            return f"unavailable (no answer in {timeout_s:g} s)"
        except httpx.HTTPError as exc:
            return f"unavailable ({type(exc).__name__})"
        if response.status_code == 200:
            return "ready"
        return f"unavailable ({response.status_code})"

    async def close(self) -> None:
        await self._client.aclose()


async def _nothing() -> Any:
    return
    yield  # an async generator with no items


def provider_engines(models: Any, environ: Mapping[str, str] | None = None
                     ) -> dict[str, ProviderEngine]:
    """The catalog's provider models, by name."""
    return {m.name: ProviderEngine(m.name, m.provider, environ)
            for m in models if m.provider is not None}
