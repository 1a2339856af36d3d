"""One error hierarchy for the whole platform, rendered as OpenAI's error JSON.

Every error a client can see is a ``SluiceError`` carrying its HTTP status; one handler at the
edge renders it. Client mistakes are 4xx with the offending field in ``param``; anything the
client may retry (engine not ready, engine died, overloaded) is 503 with ``Retry-After``.
Anything else is a bug of ours: 500 ``internal_error``, logged with its traceback and the
request id, and never dressed up as retriable.
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(SluiceError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class BodyTimeout(InvalidRequest):
    """The client did not finish sending its request body in time."""

    status = 408
    code = "request_timeout"


class ClientGone(SluiceError):
    """The client closed the connection before its request was read (nobody sees this)."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class ModelNotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(SluiceError):
    """A known path asked with a method it does not take; `Allow` lists those it does."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Unauthorized(SluiceError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(SluiceError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class Conflict(SluiceError):
    """The change asked for clashes with what exists (a key id already taken)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class BudgetExceeded(SluiceError):
    """A key's or tenant's budget is spent until its period resets."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(SluiceError):
    """A key's or tenant's requests or tokens per minute are used up for now."""

    status = 429
    type = "requests"  # OpenAI's: "requests" or "tokens", whichever limit refused
    code = "rate_limit_exceeded"


class Unavailable(SluiceError):
    """The engine is not ready, died, or shed load. The client may retry."""

    status = 503
    type = "service_unavailable"
    code = "engine_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(retry_after_s))


class InternalError(SluiceError):
    status = 500
    type = "internal_error"


def unexpected(exc: BaseException, request_id: str | None) -> InternalError:
    """What the client sees of a programming error: its kind and the id to report."""
    where = f"; request id {request_id}" if request_id else ""
    return InternalError(f"Internal error ({type(exc).__name__}){where}. This is a bug in "
                         "the server, not something to retry.", code="internal_error")


# vLLM's EngineDeadError (vllm/v1/engine/exceptions.py): the engine process is gone, the
# replica will be replaced; as an error response it arrives as a 500 with this message
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue"


def from_engine_error(status: int, message: str, err_type: str | None = None,
                      param: str | None = None, prompt_field: str = "messages") -> SluiceError:
    """Map an error the engine returned (vLLM's ErrorResponse fields) into the hierarchy."""
    lowered = message.lower()
    if status == 400 and ("context length" in lowered or "max_model_len" in lowered):
        # the prompt is too long, or max_tokens exceeds the context (vLLM: "max_tokens=N
        # cannot be greater than max_model_len=M"): OpenAI's context_length_exceeded both,
        # and what lets a cascade escalate a request too long for its small model
        output_field = param in ("max_tokens", "max_completion_tokens")
        return ContextLengthExceeded(message, param=param if output_field else prompt_field)
    if 400 <= status < 500:
        err = InvalidRequest(message, param=param)
        err.status = status
        return err
    if status == 503 or (status >= 500 and ENGINE_DEAD_MESSAGE in message):
        return Unavailable(message)  # retriable: another replica, or this one once replaced
    return InternalError(message, code=err_type)


def field_path(loc: tuple[Any, ...]) -> str:
    """A field's place in a body, as a client reads it: `messages[0].content`."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def invalid_value(errors: list[Any]) -> InvalidRequest:
    """A 400 naming the first field pydantic refused (`ValidationError.errors()`)."""
    first = errors[0]
    field = field_path(tuple(first["loc"])) or None
    return InvalidRequest(f"Invalid value for '{field}': {first['msg']}", param=field)

