"""The engine's up-front rejections, in each form the LLMServer yields them."""

import json

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ErrorInfo as EngineErrorInfo, ErrorResponse as EngineErrorResponse,
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
