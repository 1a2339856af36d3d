"""The OpenAPI document the ingress serves at `/openapi.json` (Swagger UI at `/docs`).

FastAPI builds a document from the routes' signatures, but Sluice's routes take the raw
request (the pipeline reads the body under its own size and time limits and validates it
itself), so FastAPI alone would describe no body, no answer and no error. `document` starts
from FastAPI's (every route the app has, so routes added elsewhere are covered) and states,
per operation, what a client really sends and gets: the bodies (`api_shapes`, with the
served model ids and the parser's bounds, known only once the ingress is built), the JSON
and SSE answers and their headers, every error status with OpenAI's error object, the
request headers the pipeline reads, and the bearer key. Built once, on the first request
for it; the ingress serves it and the Swagger UI (`swagger_ui`) from two routes of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from vllm import envs as vllm_envs

from sluice.deployments import api_shapes
from sluice.deployments.rollout_admin import MAX_BODY_BYTES as MAX_ROLLOUT_BODY_BYTES
from sluice.observability.metrics import CONTENT_TYPE
from sluice.pipeline.compress_stage import HEADER as COMPRESS_HEADER
from sluice.pipeline.compress_stage import PATTERN as COMPRESS_PATTERN
from sluice.pipeline.prompt_stage import HEADER as PROMPT_HEADER
from sluice.pipeline.prompt_stage import PATTERN as PROMPT_PATTERN
from sluice.pipeline.prompt_stage import VARIANT_HEADER as PROMPT_VARIANT_HEADER
from sluice.pipeline.selector import MAX_TTFT, MIN_QUALITY, PATTERNS, TASK
from sluice.rollouts.targets import versions
from sluice.router.static import StaticRouter
from sluice.schema.platform import PlatformConfig
from sluice.schema.rollouts import RolloutSpec

BEARER = "bearerAuth"
OPENAPI_URL = "/openapi.json"
REF = "#/components/schemas/{model}"
_TAG = "[A-Za-z0-9._:=-]{1,64}"  # one tag (sluice.accounting.tenancy)


@dataclass(frozen=True)
class ApiFacts:
    """What the document states that only the running platform knows."""

    max_tokens_by_model: Mapping[str, int]  # served id -> its max_tokens bound
    max_n: int
    max_tokens: int
    max_tags: int
    max_body_bytes: int
    auth_required: bool
    max_stop_chars: int = 256
    version: str = "0.1.0"
    rollout_models: tuple[str, ...] = ()  # what a rollout may name (no variant of them)
    prompts: tuple[str, ...] = ()  # the profile's prompt templates (with their versions)

    @classmethod
    def of(cls, config: PlatformConfig, router: StaticRouter) -> ApiFacts:
        ingress, auth = config.profile.ingress, config.profile.accounting.auth
        limit = ingress.max_tokens_limit
        # the handler's bound: the largest context among the models a request may run
        bound = {m: min(limit, max(c.context_length for c in router.models_at_worst(m)))
                 for m in router.model_ids}
        # the catalog's models and the cascade routes, not their versions
        bases = tuple(dict.fromkeys(base for base, _ in versions(config).values()))
        return cls(bound, ingress.max_n, limit, auth.max_tags, ingress.max_body_bytes,
                   auth.required, ingress.max_stop_chars, rollout_models=bases,
                   prompts=tuple(config.profile.prompts))


def tags_pattern(max_tags: int) -> str:
    """`x-sluice-tags` as the authenticator reads it: comma-separated tags (blank items and
    spaces around commas ignored), at most `max_tags` of them. (The authenticator counts a
    repeated tag once, so it also takes a longer list with repeats; the pattern cannot.)"""
    if max_tags < 1:
        return "^[ \\t,]*$"
    return (f"^[ \\t,]*(?:{_TAG}(?:[ \\t]*,[ \\t,]*{_TAG}){{0,{max_tags - 1}}})?[ \\t,]*$")


class ApiDocument:
    """The ingress's document, built on first request from the app that serves it (Ray
    Serve serves a copy of the module's FastAPI app, so the routes are read from the app a
    request arrived at, not from a module global)."""

    def __init__(self, facts: ApiFacts) -> None:
        self._facts = facts
        self._doc: dict[str, Any] | None = None

    def document(self, app: FastAPI) -> dict[str, Any]:
        if self._doc is None:
            self._doc = document(app, self._facts)
        return self._doc


def swagger_ui() -> HTMLResponse:
    """FastAPI's Swagger UI page for `/openapi.json` (its scripts come from a CDN)."""
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title="Sluice API")


def document(app: FastAPI, facts: ApiFacts) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=facts.version, routes=app.routes,
                      description=__doc__.split("\n\n")[0] if __doc__ else None)
    chat, completion = api_shapes.request_models(
        facts.max_tokens_by_model, facts.max_n, facts.max_tokens,
        vllm_envs.VLLM_MAX_STOP_STRINGS, facts.max_stop_chars)
    shapes: list[type[BaseModel]] = [*api_shapes.SHAPES, chat, completion, RolloutSpec]
    _, defs = models_json_schema([(m, "validation") for m in shapes], ref_template=REF)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(defs["$defs"])
    if facts.rollout_models:  # (another model: 404, a variant named as the model: 400)
        schemas["RolloutSpec"]["properties"]["model"]["enum"] = list(facts.rollout_models)
    components["securitySchemes"] = {BEARER: {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>`."
                       + ("" if facts.auth_required else " Optional on this platform "
                          "(`auth.required: false`): without one, the anonymous key.")}}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            _describe(operation, method.upper(), path, facts)
    return doc


# ---- headers ----------------------------------------------------------------------------

def _header(description: str, **schema: Any) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string", **schema}}


_RATE = {f"x-ratelimit-{what}-{kind}": _header(text.format(kind=kind))
         for kind in ("requests", "tokens")
         for what, text in (("limit", "The tightest {kind} per minute that applies."),
                            ("remaining", "{kind} left in the current window."),
                            ("reset", "Until the window frees more {kind} (e.g. `20s`)."))}
_HEADERS: dict[str, Any] = {
    "x-request-id": _header("The client's own id when it is a sane one (1-128 of "
                            "`[A-Za-z0-9._:-]`), else a fresh one; on errors too."),
    "x-sluice-ingress": _header("The ingress replica that answered."),
    "x-sluice-model": _header("The model that produced the answer."),
    "x-sluice-route": _header("How it got there: `small`, `large`, `small>large` "
                              "(escalated), `large:fallback`, `budget-downgrade`, "
                              "`fixed:<model>`."),
    "x-sluice-cache": _header("The response cache's part.", enum=["hit", "miss", "bypass"]),
    "x-sluice-cache-similarity": _header("A semantic-cache hit's similarity."),
    "x-sluice-replica": _header("The engine replica that answered."),
    "x-sluice-retries": _header("Engine replicas that failed this request before its first "
                                "output, each retried on another (with `x-sluice-replica`).",
                                pattern="^[0-9]+$"),
    "x-sluice-cost-usd": _header("The answer's cost, where it is known before the body "
                                 "(not on a live stream: its usage event has it)."),
    "x-sluice-budget": _header("`soft` once a budget passed its soft limit."),
    "x-sluice-fallback": _header("The cascade stage that failed (then `large` answered)."),
    "x-sluice-context": _header("What the model's context policy did to a request that "
                                "did not fit: `routed` (x-sluice-model names the model), "
                                "`trimmed N messages, T tokens`, `max_tokens lowered A->B`."),
    "x-sluice-compression": _header("The prompt was compressed (`x-sluice-compress` or the "
                                    "model's policy): its tokens before and after, "
                                    "`1800->700 tokens`."),
    "x-sluice-failover": _header("The models of the requested model's failover chain that "
                                 "did not answer (failed before the first byte, or put "
                                 "aside); x-sluice-model names the one that did."),
    "x-sluice-selection": _header("A selection route's choice and why: the model, its "
                                  "price, measured quality and TTFT p95, the bars, the "
                                  "candidates passed over."),
    "x-sluice-variant": _header("The version that answered: of the cascade route asked for "
                                "when it has versions (`v2` for `auto@v2`), else of the "
                                "model: a variant's label (`v2` for `large@v2`, which a "
                                "rollout chose) or the model's catalog `version`."),
    PROMPT_VARIANT_HEADER: _header("The version of the prompt template applied "
                                   "(`x-sluice-prompt`): a version's label (`v2` for "
                                   "`support@v2`, which a rollout chose) or the template's "
                                   "`version`."),
    "x-sluice-router-score": _header("The pre-router's score."),
    "x-sluice-judge-score": _header("The judge's score."),
    **_RATE,
    "Retry-After": _header("Seconds to wait before retrying."),
}


def _refs(*names: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Header objects, inline: a `$ref` may not carry `required` beside it."""
    return {n: {**_HEADERS[n], **({"required": True} if n in required else {})}
            for n in names}


_EVERY = ("x-request-id", "x-sluice-ingress")  # on every response
_ANSWER_HEADERS = (*_EVERY, "x-sluice-model", "x-sluice-route", "x-sluice-cache",
                   "x-sluice-cache-similarity", "x-sluice-replica", "x-sluice-retries",
                   "x-sluice-cost-usd", "x-sluice-budget", "x-sluice-fallback",
                   "x-sluice-context", "x-sluice-compression", "x-sluice-failover",
                   "x-sluice-selection",
                   "x-sluice-variant", "x-sluice-router-score",
                   "x-sluice-judge-score", *_RATE)
_CHAT_ANSWER_HEADERS = (*_ANSWER_HEADERS, PROMPT_VARIANT_HEADER)


# ---- responses --------------------------------------------------------------------------

_ERRORS: dict[int, str] = {
    400: "Invalid request: not a JSON object, a field of the wrong type or out of range "
         "(`param` names it), `stream_options` without `stream: true`, a prompt longer "
         "than the model's context (`code: context_length_exceeded`), or a bad header or "
         "query parameter.",
    401: "Missing or unknown API key (`code: invalid_api_key`).",
    403: "The key may not do this: another tenant's usage, a model the key is not allowed "
         "to use, or key management without an admin key (`type: permission_error`).",
    404: "No such model (`code: model_not_found`), resource, or feature on this platform.",
    408: "The request body did not arrive in time (`code: request_timeout`).",
    409: "Clashes with what exists (a key id already taken).",
    413: "The body is larger than the ingress takes (`code: request_too_large`).",
    429: "A rate limit (`code: rate_limit_exceeded`, with the `x-ratelimit-*` headers) or a "
         "budget (`type: insufficient_quota`) refused it; `Retry-After` says when to retry.",
    500: "A bug in Sluice (`type: internal_error`): the message names the request id. Not "
         "worth retrying.",
    503: "Not available now (an engine not ready, dead or overloaded, no first token in "
         "time, a store unreachable): retry after `Retry-After` seconds.",
}


def _error(status: int) -> dict[str, Any]:
    names: tuple[str, ...] = _EVERY
    if status == 429:
        names = (*names, "Retry-After", *_RATE)
    elif status == 503:
        names = (*names, "Retry-After")
    return {"description": _ERRORS[status],
            "headers": _refs(*names, required=("Retry-After",)),
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}}


def _ok(shape: str | None, description: str, *, headers: tuple[str, ...] = _EVERY,
        required: tuple[str, ...] = (), stream: bool = False, text: str | None = None
        ) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if shape is not None:
        content["application/json"] = {"schema": {"$ref": REF.format(model=shape)}}
    if stream:  # (Open API 3.1: the schema of a stream is each event's)
        content["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"], "description": "One server-sent "
            "event: `data` is a chunk's JSON (`chat.completion.chunk` / `text_completion`, "
            "the last with the usage when asked), an error object if the stream fails "
            "after it started, and finally `[DONE]`.",
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}
    if text is not None:
        content[text] = {"schema": {"type": "string"}}
    return {"description": description, "headers": _refs(*headers, required=required),
            "content": content}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


def _request_headers(facts: ApiFacts, chat: bool) -> list[dict[str, Any]]:
    def h(name: str, description: str, **schema: Any) -> dict[str, Any]:
        return {"name": name, "in": "header", "required": False,
                "description": description, "schema": {"type": "string", **schema}}
    templates = ", ".join(f"`{p}`" for p in facts.prompts) or "none on this platform"
    prompt = [h(PROMPT_HEADER, "A prompt template of the profile, whose system message goes "
                "first in the chat (before the request's own, or instead of them where the "
                f"template says so): {templates}. A name it lacks: 404 `prompt_not_found`.",
                pattern=PROMPT_PATTERN)] if chat else []
    return [*prompt,
        h("x-request-id", "Your id for the request, echoed back and put in the ledger."),
        h("x-sluice-tags", f"Cost-attribution tags, comma-separated (at most "
          f"{facts.max_tags}, a repeat counting once; each 1-64 of letters, digits and "
          f"`._:=-`).",
          pattern=tags_pattern(facts.max_tags)),
        h("cache-control", "`no-cache`: skip the response-cache lookup (the answer is "
          "still stored); `no-store`: skip the cache entirely."),
        h("x-sluice-cache", "`allow`: the response cache may answer a non-deterministic "
          "request (any other value: the default)."),
        h("x-sluice-semantic-cache", "`allow` opts this request in to the semantic cache; "
          "`off` out of it."),
        h("x-sluice-context", "The context policy for this request, when the profile lets "
          "clients choose: `reject` (400 when it does not fit), `route` (the cheapest model "
          "that fits), `trim` (drop the oldest turns of a chat).",
          enum=["reject", "route", "trim"]),
        h(COMPRESS_HEADER, "Prompt compression of a chat's long context, when the profile "
          "lets clients choose: `on`, `off`, or `ratio=R` (a decimal between 0 and 1: the "
          "share of the context kept) and/or `method=relevance|salience`, separated by `;`.",
          pattern=COMPRESS_PATTERN),
        h(TASK, "A selection route: the request's task type (its quality bar reads the "
          "quality measured for it).", pattern=f"^{PATTERNS[TASK]}$"),
        h(MAX_TTFT, "A selection route: the latency bar, measured TTFT p95 in ms (1 to "
          "9,999,999).", pattern=f"^{PATTERNS[MAX_TTFT]}$"),
        h(MIN_QUALITY, "A selection route: the quality bar, 0 to 1.",
          pattern=f"^{PATTERNS[MIN_QUALITY]}$"),
        h("traceparent", "W3C trace context: the request's span is its child."),
    ]


# ---- operations -------------------------------------------------------------------------

_INFERENCE_ERRORS = (400, 401, 403, 404, 408, 413, 429, 500, 503)
_ADMIN_ERRORS = (400, 401, 403, 404, 409, 500, 503)
_USAGE_GROUPS = ["key", "tenant", "model", "served_model", "tag", "route", "variant"]


def _inference(shape: str, body: str, what: str, chat: bool) -> dict[str, Any]:
    return {"summary": what, "body": body, "errors": _INFERENCE_ERRORS, "access": "key",
            "headers": "chat" if chat else "completions", "ok": _ok(
                shape, f"The answer: a `{shape}` object, or with `stream: true` an SSE "
                "stream of chunks.", headers=_CHAT_ANSWER_HEADERS if chat else _ANSWER_HEADERS,
                stream=True,
                required=("x-sluice-model", "x-sluice-route", "x-sluice-cache"))}


_SERVICE_DISCOVERY = {  # Prometheus' http_sd_config body
    "type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "required": ["targets", "labels"], "additionalProperties": False,
        "properties": {
            "targets": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "required": ["job"],
                       "additionalProperties": {"type": "string"}}}}}

_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/chat/completions"): _inference(
        "ChatCompletion", "ChatCompletionRequest", "Chat completion (OpenAI-compatible)",
        chat=True),
    ("POST", "/v1/completions"): _inference(
        "TextCompletion", "CompletionRequest", "Text completion (OpenAI-compatible)",
        chat=False),
    ("GET", "/v1/models"): {"summary": "The models and cascade routes served",
                            "ok": _ok("ModelList", "Every model id a request may name.")},
    ("GET", "/v1/models/{model_id}"): {
        "summary": "One model or route", "errors": (404, 500),
        "ok": _ok("ModelCard", "The model's card: tier, context length, a route's stages.")},
    ("GET", "/v1/usage"): {
        "summary": "Spend and tokens from the ledger, grouped", "access": "key",
        "errors": (400, 401, 403, 404, 500, 503),
        "ok": _ok("UsageReport", "Requests, errors, cache hits, tokens and cost per group "
                  "(the caller's tenant unless an admin key names one)."),
        "query": [
            _query("group_by", "What to group by (default `key`).", enum=_USAGE_GROUPS),
            _query("start", "Window start: Unix seconds or ISO 8601 (default: `end` - "
                   "24 h). Must be before `end`; the window spans at most 92 days."),
            _query("end", "Window end: Unix seconds or ISO 8601 (default: now)."),
            _query("tenant", "Another tenant (admin keys only; else 403).")]},
    ("GET", "/v1/routing/stats"): {
        "summary": "Per cascade route: routes taken, fallbacks, judge reliability",
        "ok": _ok("RoutingStats", "One snapshot per route.")},
    ("GET", "/v1/cache/stats"): {
        "summary": "This ingress replica's response- and semantic-cache counters",
        "ok": {**_ok(None, "Counters."), "content": {"application/json": {"schema": {
            "type": "object"}}}}},
    ("POST", "/v1/admin/rollouts"): {
        "summary": "Start a canary, A/B or shadow rollout of a model, a cascade route or a "
                   "prompt template (`prompt:<name>`) to one of its variants",
        "access": "operator", "errors": (*_ADMIN_ERRORS, 413), "body": "RolloutSpec",
        "body_bytes": MAX_ROLLOUT_BODY_BYTES,
        "ok": {**_ok(None, "Started: the rollout as `GET /v1/admin/rollouts/{model}` shows "
                     "it. 404: no such model or variant here; 409: one runs, or the variant "
                     "already serves."),
               "content": {"application/json": {"schema": {"type": "object"}}}}},
    ("GET", "/healthz"): {"summary": "Liveness", "ok": _ok("Health", "The ingress runs.")},
    ("GET", "/readyz"): {
        "summary": "Readiness: every model's engine answers its health check",
        "ok": _ok("Readiness", "Ready."), "responses": {"503": {
            **_ok("Readiness", "Not ready (some model unavailable).",
                  headers=(*_EVERY, "Retry-After"), required=("Retry-After",))}}},
    ("GET", "/metrics"): {"summary": "Prometheus metrics of this ingress replica",
                          "ok": _ok(None, "Prometheus text exposition.",
                                    text=CONTENT_TYPE.split(";")[0])},
    ("GET", "/metrics/targets"): {
        "summary": "Prometheus HTTP service discovery: every ingress replica's own metrics "
                   "endpoint", "errors": (404, 500, 503),
        "ok": {**_ok(None, "One group of `address:port` targets (each live replica's "
                     "metrics endpoint, `ingress.metrics_port`) labelled with the job. 404: "
                     "the profile sets no metrics_port; 503: the registry (Redis) is "
                     "unreachable, and Prometheus keeps the targets it has."),
               "content": {"application/json": {"schema": _SERVICE_DISCOVERY}}}},
}


def _describe(operation: dict[str, Any], method: str, path: str, facts: ApiFacts) -> None:
    """Replace what FastAPI guessed for one operation with what the route really does."""
    admin = path.startswith("/v1/admin/")
    # rollouts: an admin key where keys are required, anyone otherwise (rollout_admin)
    access = "operator" if path.startswith("/v1/admin/rollouts") else "admin"
    spec = _OPERATIONS.get((method, path)) or (
        {"errors": _ADMIN_ERRORS, "access": access, "body": "object" if method == "POST"
         and "{" not in path else None} if admin else {})
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # no FastAPI validation: the routes read the raw request
    if "summary" in spec:
        operation["summary"] = spec["summary"]
    ok = spec.get("ok") or {"description": "Done.", "headers": _refs(*_EVERY),
                            "content": {"application/json": {"schema": {"type": "object"}}}}
    status = next((s for s in responses if s.startswith("2")), "200")
    responses[status] = ok
    errors = spec.get("errors", (500,))
    access = spec.get("access", "public")
    for code in errors:
        if (code == 401 and access in ("key", "operator")
                and not facts.auth_required):
            continue  # without `auth.required`, an unknown key is the anonymous one
        responses[str(code)] = _error(code)
    responses.update(spec.get("responses", {}))
    if access != "public":
        optional = access in ("key", "operator") and not facts.auth_required
        operation["security"] = [{}, {BEARER: []}] if optional else [{BEARER: []}]
    parameters = [p for p in operation.get("parameters", [])]
    for p in parameters:
        if p.get("in") == "path" and p.get("name") == "model_id":
            p["schema"] = {"type": "string", "enum": list(facts.max_tokens_by_model)}
    parameters += spec.get("query", [])
    if spec.get("headers"):
        parameters += _request_headers(facts, chat=spec["headers"] == "chat")
    if parameters:
        operation["parameters"] = parameters
    body = spec.get("body")
    if body is not None:
        schema = ({"type": "object"} if body == "object"
                  else {"$ref": REF.format(model=body)})
        bound = spec.get("body_bytes", facts.max_body_bytes)
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": schema}},
            "description": f"JSON, at most {bound} bytes (else 413)."}
