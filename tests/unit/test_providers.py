"""Provider models (#21): the HTTP call's contract (an EngineStream, errors named as an
engine's), the failover chain and its breaker, and the catalog's rules for them. The HTTP
server here is httpx's MockTransport (pure logic); the live test runs a real one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from pydantic import ValidationError
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from sluice import sse
from sluice.errors import InvalidRequest, Unavailable
from sluice.pipeline.engines import SUBJECT_ATTR, Engines, EngineStream
from sluice.pipeline.failover import Breaker
from sluice.pipeline.providers import ProviderEngine
from sluice.schema.catalog import Catalog, CatalogModel, ProviderEndpoint

ENDPOINT = ProviderEndpoint(base_url="http://provider.test/v1", model="their-model",
                            api_key_env="TEST_PROVIDER_KEY", first_token_timeout_s=0.5,
                            stall_timeout_s=0.5, request_timeout_s=1.0)
ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "their-model",
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "hi"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def _request(**extra: Any) -> ChatCompletionRequest:
    request = ChatCompletionRequest.model_validate(
        {"model": "hosted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
         **extra})
    request.request_id = "req-1"
    # the rollout subject the handler sets on every request: the caller's key and tenant
    setattr(request, SUBJECT_ATTR, {"default": "u", "key": "k:app-1", "tenant": "t:acme"})
    return request


def _engine(handler, environ: dict[str, str] | None = None) -> ProviderEngine:
    return ProviderEngine("hosted", ENDPOINT, environ or {"TEST_PROVIDER_KEY": "sk-p"},
                          transport=httpx.MockTransport(handler))


def _run(coro):
    return asyncio.run(coro)


def test_a_whole_answer_comes_from_the_providers_api_with_its_key_and_model_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANSWER)

    stream = _run(_engine(handler).call("chat", _request()))
    assert isinstance(stream, EngineStream) and stream.model == "hosted"
    assert stream.whole() == ANSWER and stream.replica == "provider:provider.test"
    sent = json.loads(seen[0].content)
    assert str(seen[0].url) == "http://provider.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-p"
    assert sent["model"] == "their-model" and sent["max_tokens"] == 4
    assert "request_id" not in sent  # Sluice's own fields stay home
    assert SUBJECT_ATTR not in sent and "acme" not in seen[0].content.decode()


def _sse(*events: dict) -> bytes:
    return b"".join(sse.encode(e).encode() for e in events) + sse.DONE.encode()


def _chunk(content: str) -> dict:
    return {"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def _events(stream: EngineStream) -> list[sse.Event]:
    async def read() -> list[sse.Event]:
        return [e async for chunk in stream.events() for e in chunk]
    return _run(read())


def test_a_stream_is_relayed_event_by_event_and_ends_with_done() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(_chunk("Hel"), _chunk("lo")),
                              headers={"content-type": "text/event-stream"})

    async def go() -> list[sse.Event]:
        stream = await _engine(handler).call("chat", _request(stream=True))
        return [e async for chunk in stream.events() for e in chunk]

    events = _run(go())
    text = "".join((e.payload or sse.payload(e.text) or {}).get("choices", [{}])[0]
                   .get("delta", {}).get("content", "") for e in events if e.kind != sse.END)
    assert text == "Hello" and events[-1].kind == sse.END


@pytest.mark.parametrize(("status", "headers", "code", "retry_after"), [
    (429, {"retry-after": "7"}, "provider_rate_limited", "7"),
    (503, {}, "provider_unavailable", "1"),
    (500, {}, "provider_unavailable", "1"),
])
def test_a_providers_429_and_5xx_are_retriable_503s(status: int, headers: dict, code: str,
                                                    retry_after: str) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, json={"error": {"message": "busy"}})

    with pytest.raises(Unavailable) as caught:
        _run(_engine(handler).call("chat", _request()))
    assert caught.value.code == code and caught.value.headers["Retry-After"] == retry_after
    assert f"answered {status}: busy" in caught.value.message


def test_a_providers_4xx_is_the_clients_mistake_with_its_message() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "bad stop", "param": "stop"}})

    with pytest.raises(InvalidRequest) as caught:
        _run(_engine(handler).call("chat", _request()))
    assert caught.value.status == 400 and caught.value.message == "bad stop"
    assert caught.value.param == "stop"


def test_an_unreachable_or_silent_provider_is_a_retriable_503() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(Unavailable, match="could not be reached: ConnectError"):
        _run(_engine(refused).call("chat", _request()))

    async def silent(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=ANSWER)

    with pytest.raises(Unavailable, match="did not answer within 1 s"):
        _run(_engine(silent).call("chat", _request()))  # not streamed: the request bound
    with pytest.raises(Unavailable, match="did not answer within 0.5 s"):
        _run(_engine(silent).call("chat", _request(stream=True)))  # its first event


def _streaming(body: bytes):
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    return handler


@pytest.mark.parametrize(("error", "code"), [
    ({"message": "slow down", "type": "rate_limit_exceeded", "code": 429},
     "provider_rate_limited"),
    ({"message": "busy", "type": "server_error", "code": None}, "provider_unavailable"),
    ({"message": "busy", "type": "BadRequestError", "code": 503}, "provider_unavailable"),
    ({"message": "busy", "type": "overloaded_error", "code": "529"}, "provider_unavailable"),
    ({"message": "busy"}, "provider_unavailable"),  # nothing says whose fault: the provider's
    ({"message": "odd", "code": 1}, "provider_unavailable"),  # no HTTP status: the provider's
])
def test_a_stream_whose_first_event_is_a_retriable_error_is_a_503(error: dict,
                                                                   code: str) -> None:
    with pytest.raises(Unavailable) as caught:
        _run(_engine(_streaming(_sse({"error": error}))).call("chat", _request(stream=True)))
    assert caught.value.code == code
    assert "its provider's stream began with an error" in caught.value.message
    assert f": {error['message']})" in caught.value.message  # the provider's own words


def test_a_stream_whose_first_event_is_a_client_error_is_that_4xx() -> None:
    error = {"message": "bad stop", "type": "invalid_request_error", "param": "stop",
             "code": 400}
    with pytest.raises(InvalidRequest) as caught:
        _run(_engine(_streaming(_sse({"error": error}))).call("chat", _request(stream=True)))
    assert caught.value.status == 400 and caught.value.param == "stop"
    assert caught.value.message == "bad stop"


def test_a_stream_that_breaks_before_its_first_event_is_a_retriable_503() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):
            raise httpx.ReadError("connection reset")
            yield b""

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken(),
                              headers={"content-type": "text/event-stream"})

    with pytest.raises(Unavailable, match="could not be reached: ReadError"):
        _run(_engine(handler).call("chat", _request(stream=True)))
    with pytest.raises(Unavailable, match="ended before any output"):
        _run(_engine(_streaming(b"")).call("chat", _request(stream=True)))


def test_a_stream_opening_with_an_error_fails_over_to_the_next_provider() -> None:
    first = ProviderEngine("a", ENDPOINT, {}, transport=httpx.MockTransport(_streaming(
        _sse({"error": {"message": "busy", "type": "server_error", "code": 500}}))))
    second = ProviderEngine("b", ENDPOINT, {}, transport=httpx.MockTransport(_streaming(
        _sse(_chunk("Hel"), _chunk("lo")))))
    engines = Engines({}, {}, 1, trace.NoOpTracer(), providers={"a": first, "b": second},
                      failover={"a": ("b",)})
    stream = _run(engines.call("a", "chat", _request(stream=True)))
    assert stream.model == "b" and stream.failed_over == ("a",)
    assert [e.kind for e in _events(stream)][-1] == sse.END


def test_a_stream_that_breaks_midway_ends_with_an_error_event_then_done() -> None:
    class Breaking(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield sse.encode(_chunk("Hel")).encode()
            raise httpx.ReadError("connection reset")

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Breaking(),
                              headers={"content-type": "text/event-stream"})

    async def go() -> list[sse.Event]:
        stream = await _engine(handler).call("chat", _request(stream=True))
        return [e async for chunk in stream.events() for e in chunk]

    events = _run(go())
    kinds = [e.kind for e in events]
    assert kinds[-2:] == [sse.ERROR, sse.END]
    assert "provider_unavailable" in events[-2].text


def test_a_stream_that_goes_quiet_ends_at_its_stall_bound_and_closes_the_call() -> None:
    closed: list[bool] = []

    class Quiet(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield sse.encode(_chunk("Hel")).encode()
            await asyncio.sleep(30)
            yield b""

        async def aclose(self) -> None:
            closed.append(True)

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Quiet(),
                              headers={"content-type": "text/event-stream"})

    async def go() -> list[sse.Event]:
        stream = await _engine(handler).call("chat", _request(stream=True))
        events = [e async for chunk in stream.events() for e in chunk]
        await asyncio.sleep(0.05)  # the close the stall scheduled
        return events

    events = _run(go())
    assert [e.kind for e in events][-2:] == [sse.ERROR, sse.END]
    assert "engine_stalled" in events[-2].text and closed == [True]


# ---- the failover chain ---------------------------------------------------------------


class _Backend:
    """A provider-shaped backend that fails its first `failures` calls."""

    def __init__(self, name: str, failures: int = 0, error: Unavailable | None = None):
        self.name, self.failures, self.calls = name, failures, 0
        self.error = error or Unavailable(f"{name} down", code="provider_unavailable")
        self.endpoint = ProviderEndpoint(base_url="http://x.test", model=name)

    async def call(self, endpoint: str, request: Any) -> EngineStream:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return EngineStream(self.name, None, _empty(), f"provider:{self.name}")


async def _empty():
    return
    yield


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _engines(backends: list[_Backend], clock: _Clock, seen: list) -> Engines:
    return Engines({}, {}, 1, trace.NoOpTracer(),
                   providers={b.name: b for b in backends},
                   failover={"a": ("b", "c")},
                   breaker=Breaker(threshold=2, cooldown_s=30, clock=clock),
                   on_failover=lambda model, to: seen.append((model, to)))


def test_a_failed_call_passes_to_the_next_model_of_the_chain() -> None:
    a, b, c = _Backend("a", failures=10), _Backend("b", failures=1), _Backend("c")
    clock, seen = _Clock(), []
    engines = _engines([a, b, c], clock, seen)
    stream = _run(engines.call("a", "chat", _request()))
    assert stream.model == "c" and stream.failed_over == ("a", "b")
    assert seen == [("a", "c")]  # one failover a request: to the model that answered
    stream = _run(engines.call("a", "chat", _request()))  # b recovered
    assert stream.model == "b" and stream.failed_over == ("a",)
    assert seen == [("a", "c"), ("a", "b")]


def test_a_model_failing_repeatedly_is_put_aside_then_tried_again_after_the_cooldown() -> None:
    a, b = _Backend("a", failures=2), _Backend("b")
    clock, seen = _Clock(), []
    engines = _engines([a, b, _Backend("c")], clock, seen)
    for _ in range(2):
        assert _run(engines.call("a", "chat", _request())).model == "b"
    assert a.calls == 2 and engines.breaker.aside("a")
    stream = _run(engines.call("a", "chat", _request()))
    assert stream.model == "b" and a.calls == 2  # not even tried while aside
    assert stream.failed_over == ("a",)  # it did not answer: the header says so
    clock.now = 31.0
    assert _run(engines.call("a", "chat", _request())).model == "a"  # back, and answering
    assert not engines.breaker.aside("a")


def test_a_providers_429_puts_it_aside_for_its_retry_after() -> None:
    limited = Unavailable("a limited", code="provider_rate_limited", retry_after_s=7)
    a = _Backend("a", failures=1, error=limited)
    clock, seen = _Clock(), []
    engines = _engines([a, _Backend("b"), _Backend("c")], clock, seen)
    assert _run(engines.call("a", "chat", _request())).model == "b"
    assert engines.breaker.aside("a")  # after one 429, not `threshold` failures
    clock.now = 7.5
    assert _run(engines.call("a", "chat", _request())).model == "a"


def test_a_chain_whose_every_model_fails_raises_the_last_retriable_error() -> None:
    backends = [_Backend(n, failures=10) for n in "abc"]
    with pytest.raises(Unavailable, match="c down"):
        _run(_engines(backends, _Clock(), []).call("a", "chat", _request()))


def test_a_client_mistake_is_not_failed_over() -> None:
    a = _Backend("a", failures=1)
    a.error = InvalidRequest("bad")  # type: ignore[assignment]
    b = _Backend("b")
    with pytest.raises(InvalidRequest):
        _run(_engines([a, b, _Backend("c")], _Clock(), []).call("a", "chat", _request()))
    assert b.calls == 0


def test_breaker_order_keeps_models_aside_last_but_keeps_them() -> None:
    clock = _Clock()
    breaker = Breaker(threshold=1, cooldown_s=10, clock=clock)
    breaker.failed("a")
    assert breaker.order(["a", "b"]) == ["b", "a"]
    breaker.succeeded("a")
    assert breaker.order(["a", "b"]) == ["a", "b"]


# ---- the catalog --------------------------------------------------------------------------


def _model(**kw: Any) -> dict:
    return {"name": "hosted", "tier": "large", "context_length": 8192, **kw}


def test_a_catalog_model_is_either_run_here_or_a_providers() -> None:
    hosted = CatalogModel.model_validate(_model(provider={"base_url": "https://x.test/v1",
                                                          "model": "m"}))
    assert not hosted.local and hosted.provider is not None
    with pytest.raises(ValidationError, match="exactly one of source"):
        CatalogModel.model_validate(_model())
    with pytest.raises(ValidationError, match="exactly one of source"):
        CatalogModel.model_validate(_model(source="models/x", provider={
            "base_url": "https://x.test/v1", "model": "m"}))
    with pytest.raises(ValidationError, match="names the model itself"):
        CatalogModel.model_validate(_model(source="models/x", failover=["hosted"]))
    with pytest.raises(ValidationError, match="api_key_env"):
        CatalogModel.model_validate(_model(provider={"base_url": "https://x.test/v1",
                                                     "model": "m", "api_key_env": "a key"}))


def test_failover_names_catalog_models() -> None:
    small = {"name": "small", "tier": "small", "context_length": 2048, "source": "s"}
    with pytest.raises(ValidationError, match=r"unknown model\(s\) \['nope'\]"):
        Catalog.model_validate({"models": [small, _model(source="l", failover=["nope"])]})
    catalog = Catalog.model_validate({"models": [small, _model(
        provider={"base_url": "https://x.test/v1", "model": "m"}, failover=["small"])]})
    assert [m.name for m in catalog.local] == ["small"]
