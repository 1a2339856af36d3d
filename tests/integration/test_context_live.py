"""Context overflow policies on the real stack (#22): a conversation grown past `small`'s
2,048-token context is rejected with the right numbers, routed to `large`, or trimmed;
the ingress's token counts equal the engines' own prompt_tokens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sluice.control_tokens import control_tokens_of
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.token_counter import TokenCounter

pytestmark = pytest.mark.integration
URL = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[2]
SMALL_CONTEXT = 2048


def grown(turns: int, words: int = 60) -> list[dict[str, str]]:
    """A chat whose history grew turn by turn; the latest user message last."""
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i}: " + "tell me more " * words},
                     {"role": "assistant", "content": f"answer {i}: " + "and so on " * words}]
    return messages + [{"role": "user", "content": "So, in one word?"}]


def counted(body: dict, endpoint: str = "chat") -> int:
    """The ingress's own counter, on the request as the ingress parses it (control-token
    strings in chat text made plain text, as the ingress does before counting)."""
    source = str(ROOT / "models/demo/small")
    counter = TokenCounter({"small": source})
    raw = json.dumps(body)
    request = parsed(endpoint, json.loads(raw), RequestLimits(8, 4096), "r", {},  # type: ignore[arg-type]
                     len(raw), control_tokens_of([source]))
    n = counter.count_now("small", request.llm)
    assert n is not None
    return n


def _overflow_count(message: str) -> int:
    found = re.search(r"\((\d+) in the messages", message)
    assert found, message
    return int(found.group(1))


def test_token_counts_equal_the_engines_prompt_tokens(http) -> None:
    chats = [
        [{"role": "user", "content": "hi"}],
        grown(2),
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [{"type": "text", "text": "two"},
                                      {"type": "text", "text": "parts, één ☃ 日本"}]}],
        [{"role": "user", "content": "tabs\tand\nnewlines  and   spaces"},
         {"role": "assistant", "content": "ok"}, {"role": "user", "content": "<|end|> x"}],
    ]
    for messages in chats:
        body = {"model": "small", "messages": messages, "max_tokens": 2, "temperature": 0}
        resp = http.post(URL, json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == counted(body), messages
    for prompt in ("Once upon a time", "  leading spaces, ünïcödé", "x" * 500):
        body = {"model": "small", "prompt": prompt, "max_tokens": 2, "temperature": 0}
        resp = http.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == counted(body, "completions")


def test_reject_route_and_trim_on_a_conversation_past_the_small_context(http) -> None:
    messages = grown(12)
    body = {"model": "small", "messages": messages, "max_tokens": 32, "temperature": 0}
    full = counted(body)
    assert SMALL_CONTEXT < full < 8192 - 32

    rejected = http.post(URL, json=body, headers={"x-sluice-context": "reject"})
    assert rejected.status_code == 400, rejected.text
    error = rejected.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {SMALL_CONTEXT} tokens" in error["message"]
    assert _overflow_count(error["message"]) == full

    routed = http.post(URL, json=body, headers={"x-sluice-context": "route"})
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-sluice-model"] == "large"
    assert routed.headers["x-sluice-context"] == "routed"
    assert routed.json()["usage"]["prompt_tokens"] == full

    trimmed = http.post(URL, json=body, headers={"x-sluice-context": "trim"})
    assert trimmed.status_code == 200, trimmed.text
    assert trimmed.headers["x-sluice-model"] == "small"
    note = re.fullmatch(r"trimmed (\d+) messages, ([\d,]+) tokens",
                        trimmed.headers["x-sluice-context"])
    assert note, trimmed.headers["x-sluice-context"]
    dropped, dropped_tokens = int(note.group(1)), int(note.group(2).replace(",", ""))
    seen = trimmed.json()["usage"]["prompt_tokens"]
    assert seen + 32 <= SMALL_CONTEXT and seen == full - dropped_tokens
    # the system message and the latest turns, whole: what the engine saw
    kept = [messages[0], *messages[1 + dropped:]]
    assert seen == counted({**body, "messages": kept})


def test_a_trimmed_stream_says_so_and_completes(http) -> None:
    body = {"model": "small", "messages": grown(12), "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", URL, json=body, headers={"x-sluice-context": "trim"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-sluice-context"].startswith("trimmed ")
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])["usage"]
    assert usage["prompt_tokens"] + 8 <= SMALL_CONTEXT


def test_a_prompt_that_fits_no_model_is_a_400_under_every_policy(http) -> None:
    body = {"model": "small", "max_tokens": 16,
            "messages": [{"role": "user", "content": "word " * 9000}]}
    for policy in ("reject", "route", "trim"):
        resp = http.post(URL, json=body, headers={"x-sluice-context": policy})
        assert resp.status_code == 400, (policy, resp.text)
        assert resp.json()["error"]["code"] == "context_length_exceeded"


def test_the_auto_route_sends_a_long_chat_straight_to_large_and_overflows_are_counted(
        http) -> None:
    body = {"model": "auto", "messages": grown(12), "max_tokens": 8}
    resp = http.post(URL, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-sluice-model"] == "large"
    assert resp.headers["x-sluice-context"] == "routed"
    metrics = http.get("/metrics").text
    assert re.search(r'sluice_context_overflows_total\{model="auto",outcome="routed",'
                     r'policy="reject",tenant="[^"]+"\} [1-9]', metrics), [
        line for line in metrics.splitlines() if "context_overflows" in line]
