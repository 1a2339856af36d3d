"""Parse a request body once into vLLM's typed OpenAI request, or fail with a named field.

The typed objects are the ones ``ray.serve.llm``'s LLMServer takes (plain pydantic data, safe
to send across the Ray boundary). vLLM's own models accept some values OpenAI rejects
(``max_tokens=0``, negative temperature, huge ``n``, thousands of ``logit_bias`` entries,
megabyte stop strings); those are checked here so the client gets a 400 naming the field
rather than an engine error or a wasted generation. Like OpenAI's API, a field neither
OpenAI's nor vLLM's request type knows is refused (400 names it), not silently dropped.


The body's bytes and JSON are read first (`request_body`: size, time, strict JSON).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
from openai.types import completion_create_params as openai_completion_params
from openai.types.chat import completion_create_params as openai_chat_params
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm import envs as vllm_envs
from vllm.exceptions import VLLMClientError

from sluice.control_tokens import ControlTokens
from sluice.errors import InvalidRequest, invalid_value

Endpoint = Literal["chat", "completions"]
LLMRequest = ChatCompletionRequest | CompletionRequest
_REQUEST_TYPES: dict[Endpoint, type[LLMRequest]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for (the profile's `ingress` settings of the same names)."""

    max_n: int
    max_tokens: int
    max_logprobs: int = 20  # vLLM's default engine max_logprobs
    max_stop_chars: int = 256
    max_logit_bias: int = 1024


# OpenAI's message roles; vLLM also takes any other string as a role, which a chat template
# prints between its own turn markers (a role is no place for text)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# vLLM request fields Sluice refuses: a client's own Jinja template (vLLM refuses it too,
# without --trust-request-chat-template), and disaggregated-serving parameters, whose
# `prompt_token_ids` would replace the rendered chat prompt with any tokens at all
REFUSED_FIELDS = {
    "chat_template": "Sluice renders every chat with the model's own template",
    "kv_transfer_params": "it is internal to disaggregated serving",
    "ec_transfer_params": "it is internal to disaggregated serving",
}



def _check_range(body: dict[str, Any], field: str, lo: float | None, hi: float | None,
                 *, lo_open: bool = False) -> None:
    value = body.get(field)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # absent, or a type error pydantic will name
    if not math.isfinite(value):  # (decode_json refuses NaN; a body built elsewhere may not)
        raise InvalidRequest(f"'{field}' must be a finite number.", param=field)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and value > hi
    if too_low or too_high:
        lo_txt = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_txt = "" if hi is None else f"<= {hi}"
        bound = " and ".join(t for t in (lo_txt, hi_txt) if t)
        raise InvalidRequest(f"'{field}' must be {bound}; got {str(value)[:40]}.",
                             param=field)


def check_sampling(body: dict[str, Any], limits: RequestLimits) -> None:
    """OpenAI's bounds on the sampling fields, checked on the raw body (before defaults)."""
    _check_range(body, "max_tokens", 0, limits.max_tokens, lo_open=True)
    _check_range(body, "max_completion_tokens", 0, limits.max_tokens, lo_open=True)
    _check_range(body, "n", 1, limits.max_n)
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1, lo_open=True)
    _check_range(body, "presence_penalty", -2, 2)
    _check_range(body, "frequency_penalty", -2, 2)
    # chat: `top_logprobs`; completions: `logprobs` (chat's is a bool, skipped); vLLM's -1
    # (the whole vocabulary) is refused with the rest
    _check_range(body, "top_logprobs", 0, limits.max_logprobs)
    _check_range(body, "logprobs", 0, limits.max_logprobs)
    _check_range(body, "prompt_logprobs", 0, limits.max_logprobs)
    _check_stop(body, limits)
    _check_logit_bias(body, limits)


def _check_stop(body: dict[str, Any], limits: RequestLimits) -> None:
    """At most vLLM's VLLM_MAX_STOP_STRINGS (4, as OpenAI) non-empty strings, each at most
    `max_stop_chars`: the detokenizer holds back a stop string's length of text per stream."""
    stop = body.get("stop")
    if stop is None:
        return
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest("'stop' must be a string or a list of strings.", param="stop")
    most = vllm_envs.VLLM_MAX_STOP_STRINGS
    if len(items) > most:
        raise InvalidRequest(f"'stop' may hold at most {most} sequences; got {len(items)}.",
                             param="stop")
    if any(not s for s in items):
        raise InvalidRequest("'stop' sequences must not be empty.", param="stop")
    longest = max((len(s) for s in items), default=0)
    if longest > limits.max_stop_chars:
        raise InvalidRequest(f"'stop' sequences may be at most {limits.max_stop_chars} "
                             f"characters; got one of {longest}.", param="stop")


def _check_logit_bias(body: dict[str, Any], limits: RequestLimits) -> None:
    """OpenAI's shape (token id -> bias in [-100, 100]; vLLM would clamp silently) and at
    most `max_logit_bias` entries. Ids past the vocabulary are the engine's 400."""
    bias = body.get("logit_bias")
    if not isinstance(bias, dict):
        return  # absent, or a type error pydantic will name
    if len(bias) > limits.max_logit_bias:
        raise InvalidRequest(f"'logit_bias' may hold at most {limits.max_logit_bias} "
                             f"entries; got {len(bias)}.", param="logit_bias")
    for token, value in bias.items():
        if not (token.isascii() and token.isdigit() and len(token) <= 10):
            raise InvalidRequest(f"'logit_bias' keys must be token ids (non-negative "
                                 f"integers); got {token[:40]!r}.", param="logit_bias")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not -100 <= value <= 100):
            raise InvalidRequest(f"'logit_bias' values must be numbers from -100 to 100; "
                                 f"got {str(value)[:40]} for token {token}.",
                                 param="logit_bias")


# The JSON types of OpenAI's scalar fields. vLLM's models coerce them (pydantic's lax mode
# takes true or "5" for an integer, 1 or "yes" for a boolean, "0.5" for a number); OpenAI
# refuses them, and so does the OpenAPI document (sluice.deployments.api_shapes)
_JSON_TYPES: dict[str, str] = {
    "max_tokens": "integer", "max_completion_tokens": "integer", "n": "integer",
    "seed": "integer", "top_logprobs": "integer", "temperature": "number",
    "top_p": "number", "presence_penalty": "number", "frequency_penalty": "number",
    "stream": "boolean", "echo": "boolean"}
_LOGPROBS_TYPE: dict[Endpoint, str] = {"chat": "boolean", "completions": "integer"}
_STREAM_OPTIONS = ("include_usage", "continuous_usage_stats")


def _is_json(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "number" or isinstance(value, int) or value.is_integer()


def _json_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


def check_types(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """Each scalar field, when present and not null, has its JSON type; a message's content
    is a string or a list of parts (vLLM would iterate an object's keys); token ids are not
    booleans (400 names the field)."""
    checks = [(name, body.get(name), kind) for name, kind in
              (*_JSON_TYPES.items(), ("logprobs", _LOGPROBS_TYPE[endpoint]))]
    options = body.get("stream_options")
    if isinstance(options, dict):
        checks += [(f"stream_options.{k}", options.get(k), "boolean") for k in _STREAM_OPTIONS]
    for name, value, kind in checks:
        if value is not None and not _is_json(value, kind):
            raise InvalidRequest(f"Invalid value for '{name}': expected "
                                 f"{'an' if kind == 'integer' else 'a'} {kind}, got "
                                 f"{_json_name(value)}.", param=name)
    messages = body.get("messages") if endpoint == "chat" else None
    if messages is not None and not isinstance(messages, list):  # (vLLM's own checks
        # iterate it first: a number there was a TypeError, a 500)
        raise InvalidRequest(f"Invalid value for 'messages': expected an array, got "
                             f"{_json_name(messages)}.", param="messages")
    for i, message in enumerate(messages or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(f"Invalid value for 'messages[{i}].content': expected a "
                                 f"string or a list of content parts, got "
                                 f"{_json_name(content)}.", param=f"messages[{i}].content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(part, dict) and part.get("type") == "text" and not isinstance(
                    text, str):  # (vLLM takes a null text in some messages' parts)
                raise InvalidRequest(f"Invalid value for 'messages[{i}].content[{j}].text': "
                                     f"expected a string, got {_json_name(text)}.",
                                     param=f"messages[{i}].content[{j}].text")
    prompt = body.get("prompt") if endpoint == "completions" else None
    if isinstance(prompt, list) and any(
            isinstance(t, bool) for p in prompt for t in (p if isinstance(p, list) else [p])):
        raise InvalidRequest("Invalid value for 'prompt': token ids are integers, not "
                             "booleans.", param="prompt")


# OpenAI's own parameters (the openai package's request TypedDicts): those vLLM lacks
# (`store`, `metadata`, `prompt_cache_key`, ...) are accepted and have no effect, as before
_OPENAI_PARAMS: dict[Endpoint, Any] = {
    "chat": openai_chat_params.CompletionCreateParamsBase,
    "completions": openai_completion_params.CompletionCreateParamsBase,
}


@functools.cache
def _known_fields(endpoint: Endpoint) -> frozenset[str]:
    fields = _REQUEST_TYPES[endpoint].model_fields
    openai = _OPENAI_PARAMS[endpoint]
    return (frozenset(fields) | {f.alias for f in fields.values() if f.alias}
            | openai.__required_keys__ | openai.__optional_keys__)


def check_fields(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """OpenAI's behaviour for fields it does not know: a 400 naming the first (vLLM's own
    extensions are known fields); the fields Sluice refuses; OpenAI's message roles."""
    known = _known_fields(endpoint)
    for name in body:
        if name not in known:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name[:64]}",
                                 param=name[:64])
        if name in REFUSED_FIELDS and body[name] is not None:
            raise InvalidRequest(f"'{name}' is not accepted: {REFUSED_FIELDS[name]}.",
                                 param=name)
    messages = body.get("messages")
    if endpoint == "chat" and isinstance(messages, list):
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role is not None and (not isinstance(role, str) or role not in ROLES):
                raise InvalidRequest(
                    f"Invalid value for 'messages[{i}].role': {str(role)[:40]!r}; supported "
                    f"roles are {', '.join(sorted(ROLES))}.", param=f"messages[{i}].role")


def parse_request(endpoint: Endpoint, body: dict[str, Any], limits: RequestLimits) -> LLMRequest:
    """Validate the body into the engine's request type; 400 names the first bad field."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    check_fields(endpoint, body)
    check_types(endpoint, body)
    check_sampling(body, limits)
    if endpoint == "chat" and not body.get("messages"):
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    if endpoint == "completions" and body.get("prompt") in (None, "", []):
        raise InvalidRequest("'prompt' is required.", param="prompt")
    try:
        request = _REQUEST_TYPES[endpoint].model_validate(body)
    except pydantic.ValidationError as exc:
        raise invalid_value(exc.errors()) from None
    except VLLMClientError as exc:  # vLLM's own request checks (e.g. stream_options
        # without stream), raised from its model validators past pydantic's wrapping
        param = getattr(exc, "parameter", None)
        raise InvalidRequest(str(exc.args[0]) if exc.args else str(exc), param=param) from None
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply to be a request.") from None
    if isinstance(request, ChatCompletionRequest):
        _materialize_message_content(request)
    return request


def _materialize_message_content(request: ChatCompletionRequest) -> None:
    """Turn pydantic's lazy iterators in messages into lists so the request pickles.

    pydantic keeps ``Iterable[...]`` fields as ValidatorIterator objects, which cannot cross a
    Ray boundary (pydantic issue 9467; Ray Serve LLM's ingress works around it the same way).
    """
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict):
            request.messages[i] = message = message.model_dump()
        for key in ("content", "tool_calls"):
            value = message.get(key)
            if value is not None and not isinstance(value, (str, list)):
                try:
                    message[key] = list(value)  # type: ignore[literal-required]
                except (TypeError, ValueError) as exc:
                    raise InvalidRequest(
                        f"Invalid value for 'messages[{i}].{key}': {exc}",
                        param=f"messages[{i}].{key}",
                    ) from None


@dataclass
class ParsedRequest:
    """A request as the pipeline takes it: the client's body and its typed engine request."""

    endpoint: Endpoint
    body: dict[str, Any]  # as sent (cache keys and policies read it)
    llm: LLMRequest  # validated; the engine's own request type
    request_id: str
    headers: Mapping[str, str]
    client_usage: bool = True  # a stream's usage event goes to the client (it asked)
    body_bytes: int = 0  # the body's size as received
    added_bytes: int = 0  # what the ingress added to the prompt (control tokens made
    #   plain text, a prompt template's system message)
    prompt_tokens: int | None = None  # counted with the model's tokenizer (context_gate)
    cache_scope: str = ""  # what shapes the answer besides the body (a compression applied)
    # the versions of a route and a prompt template it was given, as rollouts name them
    # (`auto@v2`, `prompt:support@v2`): their rollouts' measurements, the ledger
    variants: list[str] = field(default_factory=list)

    @property
    def prompt_field(self) -> str:
        return "messages" if self.endpoint == "chat" else "prompt"

    @property
    def max_output_tokens(self) -> int | None:
        """The completion tokens asked for per choice: max_completion_tokens, else max_tokens
        (read from the model's fields: vLLM warns on every `.max_tokens` of a chat request)."""
        fields = self.llm.__dict__
        return fields.get("max_completion_tokens") or fields.get("max_tokens")

    def prompt_tokens_bound(self) -> int:
        """At most this many prompt tokens: a byte-level tokenizer makes no more tokens than
        the prompt has bytes (the whole body's here), plus a chat template's few special
        tokens per message. For worst-case holds, not estimates; nothing is serialised."""
        messages = self.body.get("messages")
        return (self.body_bytes + self.added_bytes
                + 8 * (len(messages) if isinstance(messages, list) else 1) + 8)

    def prompt_tokens_guess(self) -> int:
        """The counted prompt tokens; before they are counted, about 4 bytes of body a
        token (OpenAI's own rule of thumb for rate limits)."""
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        return (self.body_bytes + self.added_bytes) // 4

    def estimate(self, token_events: int) -> dict[str, Any]:
        """The usage of an answer cut short (it never sent its own), so the prompt is
        measured only then: ~4 characters a token; each token event is at least a token."""
        prompt = self.body.get("messages") or self.body.get("prompt") or ""
        return {"prompt_tokens": len(json.dumps(prompt)) // 4,
                "completion_tokens": token_events}


def parsed(endpoint: Endpoint, body: dict[str, Any], limits: RequestLimits, request_id: str,
           headers: Mapping[str, str], body_bytes: int = 0,
           control: ControlTokens | None = None) -> ParsedRequest:
    """The body validated (400 names the field), with its engine request id, the usage
    event a stream's ledger record needs, and (chat) the models' control-token strings in
    its text made plain text (`sluice.control_tokens`; `body` stays as sent)."""
    llm = parse_request(endpoint, body, limits)
    llm.request_id = request_id
    added = 0
    if control is not None and isinstance(llm, ChatCompletionRequest):
        added = control.plain_chat(llm)
    client_usage = with_usage_event(llm)
    return ParsedRequest(endpoint, body, llm, request_id, headers, client_usage, body_bytes,
                         added)


def with_usage_event(request: LLMRequest) -> bool:
    """Make a streamed request's engine send its usage event; True if the client asked.

    The ledger needs every answer's tokens; settlement drops the event again for a client
    that did not ask for it.
    """
    options = request.stream_options
    if not request.stream or (options is not None and options.include_usage):
        return True
    if options is None:
        annotation = type(request).model_fields["stream_options"].annotation
        options_cls = next(a for a in annotation.__args__ if a is not type(None))
        options = options_cls()
    request.stream_options = options.model_copy(update={"include_usage": True})
    return False
