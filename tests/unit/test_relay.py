"""The engine's up-front rejections, in each form the LLMServer yields them."""

import json

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ErrorInfo as EngineErrorInfo,
)
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ErrorResponse as EngineErrorResponse,
)

from sluice.deployments.relay import _as_error
from sluice.errors import ContextLengthExceeded, InvalidRequest

CTX = "This model's maximum context length is 2048 tokens. However, your prompt contains 2049"


def _engine_error(code: int, message: str) -> EngineErrorResponse:
    return EngineErrorResponse(error=EngineErrorInfo(message=message, type="BadRequestError",
                                                     code=code, param="input_tokens"))


def test_non_streaming_error_object() -> None:
    err = _as_error(_engine_error(400, CTX), "prompt")
    assert isinstance(err, ContextLengthExceeded) and err.param == "prompt"


def test_error_inside_first_batch() -> None:
    err = _as_error([_engine_error(400, "bad stop")], "messages")
    assert isinstance(err, InvalidRequest) and err.status == 400


def test_streaming_sse_error_event() -> None:
    event = "data: " + json.dumps({"error": {"message": CTX, "type": "BadRequestError",
                                             "param": None, "code": 400}}) + "\n\n"
    err = _as_error([event], "messages")
    assert isinstance(err, ContextLengthExceeded) and err.param == "messages"


def test_ordinary_chunks_are_not_errors() -> None:
    assert _as_error(['data: {"id": "x", "choices": []}\n\n'], "messages") is None
    assert _as_error(["data: [DONE]\n\n"], "messages") is None


# ---- call_engine against hand-built handles: failures become retriable 503s -------------

import asyncio
import contextlib

import pytest
from ray import exceptions as ray_exceptions

from sluice.deployments.relay import EngineStream, call_engine
from sluice.errors import Unavailable


class _Gen:
    def __init__(self, items=(), exc: BaseException | None = None, delay_s: float = 0) -> None:
        self._items = list(items)
        self._exc = exc
        self._delay_s = delay_s
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(self._delay_s)
        if self._exc is not None:
            raise self._exc
        if not self._items:
            raise StopAsyncIteration
        return self._items.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class _Selection:
    replica_id = "r-1"


class _Handle:
    """Serve's choose_replica/dispatch pair, over one canned generator."""

    def __init__(self, gen: _Gen) -> None:
        self.gen = gen

    @property
    def chat(self):
        handle = self

        class _Method:
            @staticmethod
            @contextlib.asynccontextmanager
            async def choose_replica(_request):
                yield _Selection()

            @staticmethod
            def dispatch(_selection, _request):
                return handle.gen

        return _Method


def _call(gen: _Gen, timeout_s: float = 5):
    return asyncio.run(call_engine(_Handle(gen), "chat", object(), "small", timeout_s))


def test_dead_replica_is_503_with_retry_after() -> None:
    with pytest.raises(Unavailable) as info:
        _call(_Gen(exc=ray_exceptions.ActorDiedError()))
    assert info.value.status == 503 and "Retry-After" in info.value.headers


def test_no_first_item_in_time_is_503_and_cancels() -> None:
    gen = _Gen(items=["late"], delay_s=1)
    with pytest.raises(Unavailable, match="within"):
        _call(gen, timeout_s=0.05)
    assert gen.cancelled


def test_empty_engine_stream_is_503() -> None:
    with pytest.raises(Unavailable):
        _call(_Gen())


def test_mid_stream_failure_ends_with_error_event_and_done() -> None:
    class _Failing(_Gen):
        async def __anext__(self):
            raise ray_exceptions.ActorDiedError()

    stream = EngineStream("small", ['data: {"id": 1}\n\n'], _Failing())

    async def collect() -> list[str]:
        return [chunk async for chunk in stream.sse()]

    chunks = asyncio.run(collect())
    assert chunks[0] == 'data: {"id": 1}\n\n'
    assert json.loads(chunks[1][6:])["error"]["code"] == "engine_unavailable"
    assert chunks[-1] == "data: [DONE]\n\n"


def test_first_item_and_the_serving_replica_are_returned() -> None:
    stream = _call(_Gen(items=['data: {"id": 1}\n\n', "data: [DONE]\n\n"]))
    assert stream.first == 'data: {"id": 1}\n\n' and stream.replica == "r-1"
