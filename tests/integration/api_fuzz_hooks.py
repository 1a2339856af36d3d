"""Schemathesis hooks of the API fuzz run (`test_api_fuzz.py`, via SCHEMATHESIS_HOOKS).

They keep the *valid* (positive) cases valid by the schema, and the invalid ones invalid:
- **cost**: the engines are tiny CPU models on a 2-core runner. An answer's length is
  `max_tokens` x `n` (unset, it is the rest of an 8k context), and a prompt's is what the
  generator draws. So a valid case's `max_tokens`/`max_completion_tokens` are capped (and set
  when absent), `n` is capped, and its prompt is trimmed to a few short messages. The schema's
  own bounds stay the served ones, so the invalid (negative) cases still probe them; an
  invalid case that sets no length gets the same short one (it may reach an engine too).
- **what OpenAPI cannot state**: a prompt must fit the model's context and its token ids its
  vocabulary (the schema documents the 400 for each); `/v1/usage`'s `start` must be before
  `end` and the window at most 92 days (the 400 is documented too); a canary rollout's
  steps rise strictly to 100 and its `max_step_s` is at least its `step_s`. Valid cases get
  values that satisfy these; a generated window or rollout the platform accepts is kept as
  drawn. (No valid rollout can start on the fuzzed stack: its catalog, routes and prompts
  have no versions, so each is a 404.)
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis

from sluice.accounting.usage_report import window
from sluice.errors import InvalidRequest
from sluice.schema.rollouts import RolloutSpec

MAX_TOKENS = 4
MAX_N = 2
MAX_MESSAGES = 4
MAX_PARTS = 2
MAX_CHARS = 40  # per text: 4 messages x 2 parts x 40 characters stay far inside 2,048 tokens
MAX_TOKEN_IDS = 64
VOCAB = 4096  # the demo models' vocabulary (sluice.demo_models)


def _text(value: Any) -> Any:
    return value[:MAX_CHARS] if isinstance(value, str) else value


def _number(value: Any) -> bool:  # (an integer may be drawn as 8.0: JSON Schema's integer)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _content(content: Any) -> Any:
    if isinstance(content, list):
        return [{**p, "text": _text(p.get("text"))} if isinstance(p, dict) else p
                for p in content[:MAX_PARTS]]
    return _text(content)


def _prompt(prompt: Any) -> Any:
    if not isinstance(prompt, list):
        return _text(prompt)
    prompt = prompt[:MAX_MESSAGES]
    if prompt and isinstance(prompt[0], list):
        return [[int(t) % VOCAB for t in ids[:MAX_TOKEN_IDS]] for ids in prompt]
    if prompt and _number(prompt[0]):
        return [int(t) % VOCAB for t in prompt[:MAX_TOKEN_IDS]]
    return [_text(p) for p in prompt]


def _cheap_inference(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    for field in ("max_tokens", "max_completion_tokens"):
        if _number(body.get(field)):
            body[field] = min(int(body[field]), MAX_TOKENS)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    if _number(body.get("n")):
        body["n"] = min(int(body["n"]), MAX_N)
    if isinstance(body.get("messages"), list):
        body["messages"] = [
            {**m, **{k: _content(m[k]) if k == "content" else _text(m[k])
                     for k in ("role", "content") if k in m}}
            if isinstance(m, dict) else m for m in body["messages"][:MAX_MESSAGES]]
    if "prompt" in body:
        body["prompt"] = _prompt(body["prompt"])
    return body


def _valid_window(query: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    try:
        window({k: str(v) for k, v in query.items() if k in ("start", "end")}, now)
        return query
    except InvalidRequest:
        query = dict(query)
        if "end" in query:
            query["end"] = str(int(now))
        if "start" in query:
            query["start"] = str(int(now) - 3600)
        return query


def _valid_rollout(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("kind", "canary") != "canary":
        return body
    body = dict(body)
    if isinstance(body.get("steps"), list):
        steps = sorted({int(s) for s in body["steps"] if _number(s)} - {100})
        body["steps"] = [*(steps or [50]), 100]
    fields = RolloutSpec.model_fields  # (an unset one is its default)
    step_s = body.get("step_s", fields["step_s"].default)
    max_step_s = body.get("max_step_s", fields["max_step_s"].default)
    if _number(step_s) and _number(max_step_s) and max_step_s < step_s:
        body["max_step_s"] = step_s
    return body


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    path = case.operation.path
    inference = path in ("/v1/chat/completions", "/v1/completions")
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        # An invalid case may still reach an engine (its violation is in a header, say):
        # an unset length becomes a short one; nothing it sets is touched, so what makes
        # the case invalid stays
        if inference and isinstance(case.body, dict) and not (
                {"max_tokens", "max_completion_tokens"} & set(case.body)):
            case.body = {**case.body, "max_tokens": MAX_TOKENS}
        return case
    if inference and isinstance(case.body, dict):
        case.body = _cheap_inference(case.body)
    elif path == "/v1/usage" and case.query:
        case.query = _valid_window(dict(case.query))
    elif path == "/v1/admin/rollouts" and isinstance(case.body, dict):
        case.body = _valid_rollout(case.body)
    return case
