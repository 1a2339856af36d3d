"""The shapes the OpenAPI document states: request bodies, answers and errors, as pydantic.

Documentation only: the ingress's routes take the raw request and the pipeline parses it
(`sluice.pipeline.request`, with its own limits and messages). What a body may hold is
stated here as that parser and vLLM enforce it, so that a request valid by the document is
accepted and one it rules out is refused: OpenAI's fields, each nullable where vLLM takes a
null, with the parser's bounds; the served model ids and the per-model `max_tokens` bound
are known only when the ingress is built, hence `request_models`. The answers are vLLM's
objects plus Sluice's `usage.cost`; extra fields are allowed everywhere (vLLM adds some).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from sluice.pipeline.request import ROLES

INT64 = 2**63 - 1


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person.")
    type: str = Field(description="`invalid_request_error`, `permission_error`, "
                      "`insufficient_quota`, `requests`/`tokens` (rate limits), "
                      "`service_unavailable` or `internal_error`.")
    param: str | None = Field(description="The field, header or parameter at fault.")
    code: str | None = Field(description="e.g. `model_not_found`, `context_length_exceeded`, "
                             "`request_too_large`, `invalid_api_key`, `rate_limit_exceeded`.")


class ErrorBody(BaseModel):
    """OpenAI's error object; every error Sluice answers has this shape."""

    error: ErrorDetail


class TextPart(BaseModel):
    """A text content part (the demo models read text only; vLLM refuses other parts for
    models without that modality)."""

    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One chat message. `content` may be null only for `assistant` (a message that only
    calls tools); other message fields (`name`, `tool_calls`, ...) go to vLLM as sent."""

    model_config = ConfigDict(json_schema_extra={"allOf": [{
        "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
        "then": {"properties": {"content": {"type": ["string", "array"]}}}}]})

    role: Literal[tuple(sorted(ROLES))] = Field(examples=["user"])  # type: ignore[valid-type]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = Field(
        default=None, description="Send a last chunk with the usage (and its cost).")


Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


# Fields shared by both endpoints, with the parser's bounds (sluice.pipeline.request)
def _sampling(max_n: int, max_tokens: int, max_stop: int, max_stop_chars: int
              ) -> dict[str, Any]:
    count = int | None
    real = float | None
    stop = Annotated[str, Field(min_length=1, max_length=max_stop_chars)]
    return {
        "max_tokens": (count, Field(None, ge=1, le=max_tokens, description=(
            "Completion tokens per choice: at most the model's context (`x-max-tokens` "
            "names each model's bound; above it, 400 `context_length_exceeded`)."))),
        "n": (count, Field(None, ge=1, le=max_n, description="Choices to generate.")),
        "temperature": (real, Field(None, ge=0, le=2)),
        "top_p": (real, Field(None, gt=0, le=1)),
        "presence_penalty": (real, Field(None, ge=-2, le=2)),
        "frequency_penalty": (real, Field(None, ge=-2, le=2)),
        "seed": (count, Field(None, ge=-INT64 - 1, le=INT64)),
        "stop": (stop | Annotated[list[stop], Field(max_length=max_stop)] | None,
                 Field(None, description="Stop sequences.")),
        "stream": (bool | None, Field(None, description=(
            "true: the answer is `text/event-stream` (SSE chunks, then `data: [DONE]`)."))),
        "stream_options": (StreamOptions | None, Field(None, description=(
            "Only with `stream: true` (otherwise 400)."))),
        "user": (str | None, None),
    }


def _output_bound(bound: int, chat: bool) -> dict[str, Any]:
    """The completion tokens asked for stay within `bound`: on chat, `max_completion_tokens`
    when it is set (then `max_tokens` is ignored, by Sluice and vLLM alike)."""
    if not chat:
        return {"properties": {"max_tokens": {"maximum": bound}}}
    return {"properties": {"max_completion_tokens": {"maximum": bound}}, "anyOf": [
        {"properties": {"max_tokens": {"maximum": bound}}},
        {"properties": {"max_completion_tokens": {"type": "integer", "minimum": 1}},
         "required": ["max_completion_tokens"]}]}


def _rules(max_tokens_by_model: Mapping[str, int], limit: int, chat: bool) -> dict[str, Any]:
    """What JSON Schema says beyond each field: `stream_options` needs `stream: true`;
    `temperature: 0` is greedy decoding, which has one answer (vLLM: `n` must be 1); a model
    whose context is under the ingress's limit bounds `max_tokens` to its context."""
    rules: list[dict[str, Any]] = [
        {"if": {"properties": {"stream_options": {"type": "object", "minProperties": 1}},
                "required": ["stream_options"]},
         "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]}},
        {"if": {"properties": {"temperature": {"const": 0}}, "required": ["temperature"]},
         "then": {"properties": {"n": {"maximum": 1}}}}]
    by_bound: dict[int, list[str]] = {}
    for model, bound in max_tokens_by_model.items():
        if bound < limit:
            by_bound.setdefault(bound, []).append(model)
    for bound, models in sorted(by_bound.items()):
        rules.append({
            "if": {"properties": {"model": {"enum": models}}, "required": ["model"]},
            "then": _output_bound(bound, chat)})
    # a field neither OpenAI nor vLLM knows is a 400; the ones they know and this document
    # leaves out (tools, response_format, logit_bias, vLLM's top_k, ...) go to vLLM
    return {"allOf": rules, "x-max-tokens": dict(max_tokens_by_model),
            "additionalProperties": False}


def request_models(max_tokens_by_model: Mapping[str, int], max_n: int, max_tokens: int,
                   max_stop: int = 4, max_stop_chars: int = 256
                   ) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two request bodies for the models this ingress serves (id -> max_tokens bound:
    the ingress's limit, or the context of the model that answers when that is smaller)."""
    ids = tuple(max_tokens_by_model)
    model_field = (Literal[ids],  # type: ignore[valid-type]
                   Field(description="A model or cascade route this platform serves "
                         "(`GET /v1/models`).", examples=[ids[0]]))
    sampling = _sampling(max_n, max_tokens, max_stop, max_stop_chars)
    chat = create_model(
        "ChatCompletionRequest", __doc__="POST /v1/chat/completions (OpenAI's shape).",
        __config__=ConfigDict(json_schema_extra=_rules(max_tokens_by_model, max_tokens,
                                                       chat=True)),
        model=model_field,
        messages=(list[Message], Field(min_length=1)),
        max_completion_tokens=sampling["max_tokens"],
        logprobs=(bool | None, Field(None, description="Return the chosen tokens' log "
                                                       "probabilities.")),
        **sampling)
    completion = create_model(
        "CompletionRequest", __doc__="POST /v1/completions (OpenAI's shape).",
        __config__=ConfigDict(json_schema_extra=_rules(max_tokens_by_model, max_tokens,
                                                       chat=False)),
        model=model_field,
        prompt=(Text | Annotated[list[Text], Field(min_length=1)] | TokenIds
                | Annotated[list[TokenIds], Field(min_length=1)], Field(description=(
                    "Text, texts, token ids or lists of token ids, none empty; token ids "
                    "must be below the model's vocabulary size (else 400)."))),
        **{**sampling, "n": (int, Field(1, ge=1, le=max_n, description=(
            "Choices to generate (not nullable on this endpoint).")))})
    return chat, completion


# ---- answers --------------------------------------------------------------------------

class Cost(BaseModel):
    total_usd: float
    currency: str
    source: str = Field(description="`engine`, or `response_cache` for a hit (cost 0).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int
    prompt_tokens_details: dict[str, Any] | None = Field(
        None, description="`cached_tokens`: prompt tokens a prefix cache held.")
    cost: Cost | None = Field(None, description="What this answer cost (Sluice).")


class AssistantMessage(BaseModel):
    role: str
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    metadata: dict[str, Any] = Field(description="Tier, context length, a cascade's stages.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class UsageReport(BaseModel):
    object: Literal["usage.report"]
    start: float
    end: float
    group_by: str
    tenant: str | None
    data: list[dict[str, Any]]
    total: dict[str, Any]


class RoutingStats(BaseModel):
    routes: dict[str, dict[str, Any]]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    models: dict[str, str]
    replicas: dict[str, int]
    response_cache: str
    kv_tier: str
    providers: dict[str, str] | None = Field(
        default=None, description="Hosted models: ready, aside (put aside by the breaker) or "
        "unavailable (why); reported, not counted in `status`.")


SHAPES: tuple[type[BaseModel], ...] = (
    ErrorBody, ChatCompletion, TextCompletion, ModelCard, ModelList, UsageReport,
    RoutingStats, Health, Readiness)
