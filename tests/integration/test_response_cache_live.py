"""Exact-match response cache on the real stack: real Redis, real engines."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.integration
URL = "/v1/chat/completions"


def _uncosted(answer: dict) -> dict:
    """The answer without its cost block (a cache hit reports 0 and its source)."""
    usage = {k: v for k, v in answer.get("usage", {}).items() if k != "cost"}
    return {**answer, "usage": usage}


def _body(**extra) -> dict:
    # a unique prompt per call site, so tests never see each other's entries
    content = f"cache test {uuid.uuid4().hex[:8]}"
    return {"model": "small", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "temperature": 0} | extra


def _until(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        result = fn()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _hit(http, body, headers=None):
    resp = http.post(URL, json=body, headers=headers or {})
    return resp if resp.headers["x-sluice-cache"] == "hit" else None


def test_deterministic_request_misses_then_hits_with_the_same_answer(http) -> None:
    body = _body()
    first = http.post(URL, json=body)
    assert first.status_code == 200 and first.headers["x-sluice-cache"] == "miss"
    hit = _until(lambda: _hit(http, body), 10, "a cache hit")
    # the same answer; only its cost differs: a hit ran no engine
    assert _uncosted(hit.json()) == _uncosted(first.json())
    assert hit.json()["usage"]["cost"]["source"] == "response_cache"
    assert hit.headers["x-sluice-model"] == "small"
    # `auto` is a cascade with an entry of its own: whatever route answered is replayed
    auto = body | {"model": "auto"}
    assert http.post(URL, json=auto).headers["x-sluice-cache"] == "miss"
    auto_hit = _until(lambda: _hit(http, auto), 10, "a cache hit for auto")
    assert auto_hit.headers["x-sluice-route"] == "cache"
    # a different sampling parameter is a different entry
    assert http.post(URL, json=body | {"max_tokens": 5}).headers["x-sluice-cache"] == "miss"


def test_sampled_requests_bypass_unless_the_client_opts_in(http) -> None:
    body = _body(temperature=0.8)
    assert http.post(URL, json=body).headers["x-sluice-cache"] == "bypass"
    opt_in = {"x-sluice-cache": "allow"}
    assert http.post(URL, json=body, headers=opt_in).headers["x-sluice-cache"] == "miss"
    _until(lambda: _hit(http, body, opt_in), 10, "an opted-in hit")


def test_cache_control_no_cache_and_no_store(http) -> None:
    body = _body()
    http.post(URL, json=body)
    _until(lambda: _hit(http, body), 10, "a cache hit")
    no_cache = http.post(URL, json=body, headers={"cache-control": "no-cache"})
    assert no_cache.headers["x-sluice-cache"] == "miss"  # not read, engine answered
    other = _body()
    resp = http.post(URL, json=other, headers={"cache-control": "no-store"})
    assert resp.headers["x-sluice-cache"] == "bypass"
    time.sleep(0.5)
    assert http.post(URL, json=other).headers["x-sluice-cache"] == "miss"  # nothing stored


def test_streamed_answers_are_cached_as_streams(oai) -> None:
    body = _body(stream=True, stream_options={"include_usage": True})
    kwargs = {k: v for k, v in body.items() if k != "stream"}

    def collect():
        raw = oai.chat.completions.with_raw_response.create(stream=True, **kwargs)
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-sluice-cache"], text, chunks[-1].usage.completion_tokens

    def looked_up():  # a lookup over the cache's 50 ms Redis budget is a bypass: ask again
        result = collect()
        return result if result[0] != "bypass" else None

    status, text, tokens = _until(looked_up, 10, "a stream the cache looked up")
    assert status == "miss" and tokens == 4

    def hit():
        result = collect()
        return result if result[0] == "hit" else None

    _, cached_text, cached_tokens = _until(hit, 10, "a streamed cache hit")
    assert (cached_text, cached_tokens) == (text, tokens)


def test_cached_answers_never_cross_tenants_exact_or_semantic(http) -> None:
    """team-a's answer is a hit for team-a only: team-b asking the same question (or, with
    the semantic cache, a paraphrase of it) is answered by the engine."""
    team_a = {"authorization": "Bearer sk-test-team-a"}
    team_b = {"authorization": "Bearer sk-test-team-b"}
    body = _body()
    assert http.post(URL, json=body, headers=team_a).headers["x-sluice-cache"] == "miss"
    _until(lambda: _hit(http, body, team_a), 10, "team-a's own hit")
    theirs = http.post(URL, json=body, headers=team_b)
    assert theirs.status_code == 200 and theirs.headers["x-sluice-cache"] != "hit"

    opt_in = {"x-sluice-semantic-cache": "allow"}
    system = {"role": "system", "content": f"tenant test {uuid.uuid4().hex[:8]}"}

    def asked(question: str) -> dict:
        return {"model": "small", "max_tokens": 4, "temperature": 0,
                "messages": [system, {"role": "user", "content": question}]}

    http.post(URL, json=asked("What is the boiling point of water at sea level?"),
              headers=team_a | opt_in)
    paraphrase = asked("At sea level, what's the boiling point of water?")
    mine = _until(lambda: _hit(http, paraphrase, team_a | opt_in), 20,
                  "team-a's semantic hit")
    assert mine.headers.get("x-sluice-cache-similarity")
    other = http.post(URL, json=paraphrase, headers=team_b | opt_in)
    assert other.status_code == 200 and other.headers["x-sluice-cache"] != "hit"


def test_entries_expire_after_their_ttl(http, stack) -> None:
    ttl = stack.config.profile.response_cache.ttl_s
    body = _body()
    http.post(URL, json=body)
    _until(lambda: _hit(http, body), 10, "a cache hit")
    time.sleep(ttl + 1)
    assert http.post(URL, json=body).headers["x-sluice-cache"] == "miss"


def test_redis_outage_costs_no_request_and_recovers_by_itself(http, stack) -> None:
    body = _body()
    stack.redis.stop()
    try:
        for _ in range(5):
            start = time.monotonic()
            resp = http.post(URL, json=body)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-sluice-cache"] == "bypass"
            assert time.monotonic() - start < 5  # no seconds-long stall on a dead Redis
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["response_cache"] == "degraded"
    finally:
        stack.redis.start()
    retry_s = stack.config.profile.response_cache.retry_after_s
    _until(lambda: _hit(http, body) if http.post(URL, json=body).headers["x-sluice-cache"]
           != "bypass" else None, retry_s + 20, "the cache to come back")
    assert http.get("/readyz").json()["response_cache"] == "ok"
