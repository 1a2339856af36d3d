"""A hosted model behind Sluice, and its failover chain, on real servers (#21).

No hosted provider is reachable here, so vLLM's own OpenAI server stands in for one (the
demo `small` weights served as `their-small`), behind the chaos harness's TCP fault proxy
(`loadtests.chaos.fault_proxy`). A `sluice serve` of its own runs `small` on its engine and
serves the catalog model `hosted`, a provider model pointing at the proxy, whose failover
chain is `[small]`. Shown: `hosted` answers through both front doors with the official
`openai` and `anthropic` SDKs, streamed or not, priced at its own prices in the ledger; when
the provider is down or stalls past its first-byte bound, every request is still answered
(by `small`, named in `x-sluice-failover`), the failing provider is put aside after
`failover_threshold` failures, and it answers again once its cooldown is over. `claude` is
the same server called through its Anthropic-compatible `/v1/messages`, as Sluice calls
Anthropic's API, behind an HTTP fault proxy: it answers as `hosted` does, and a 429 with
`Retry-After` puts it aside for that long at once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from openai import OpenAI

from loadtests.provider_bench import killed
from loadtests.provider_stack import ProviderStack, Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SETTINGS = Settings(response_cache=True)
PRICES = SETTINGS.prices
FIRST_BYTE_S, COOLDOWN_S, THRESHOLD = (SETTINGS.first_byte_s, SETTINGS.cooldown_s,
                                       SETTINGS.threshold)
MSG = [{"role": "user", "content": "Name a river."}]


@pytest.fixture(scope="module")
def stack() -> Iterator[dict]:
    running = ProviderStack(SETTINGS)
    try:
        try:
            running.start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield {"url": running.url, "proxy": running.proxy, "faults": running.http_faults,
               "stack": running}
    finally:
        running.stop()


def _ask(url: str, model: str = "hosted", **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] Name a river."}],
        **extra})


def test_a_hosted_model_answers_through_both_front_doors_at_its_own_prices(stack) -> None:
    url = stack["url"]
    models = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    assert {"small", "hosted"} <= models
    gpt = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    raw = gpt.chat.completions.with_raw_response.create(
        model="hosted", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] hello"}])
    reply = raw.parse()
    assert raw.headers["x-sluice-model"] == "hosted" and "x-sluice-failover" not in raw.headers
    assert raw.headers["x-sluice-replica"] == f"provider:127.0.0.1:{SETTINGS.proxy_port}"
    assert reply.model == "their-small"  # the provider's own id of what answered
    usage = reply.usage
    assert usage.completion_tokens > 0
    price = (usage.prompt_tokens * PRICES["input_per_1m"]
             + usage.completion_tokens * PRICES["output_per_1m"]) / 1e6
    assert float(raw.headers["x-sluice-cost-usd"]) == pytest.approx(price, rel=1e-6)

    streamed = "".join(c.choices[0].delta.content or "" for c in gpt.chat.completions.create(
        model="hosted", max_tokens=8, temperature=0, stream=True,
        messages=[{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] hello"}])
        if c.choices)
    assert streamed

    claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120)
    no_store = {"cache-control": "no-store"}  # each of the four priced, none a cache hit
    message = claude.messages.create(model="hosted", max_tokens=8, messages=MSG,
                                     extra_headers=no_store)
    assert message.content[0].text and message.usage.output_tokens > 0
    with claude.messages.stream(model="hosted", max_tokens=8, messages=MSG,
                                extra_headers=no_store) as stream:
        assert "".join(stream.text_stream)

    def ledgered() -> dict:
        report = httpx.get(f"{url}/v1/usage", params={"group_by": "model"}, timeout=30).json()
        return next((g for g in report["data"] if g["group"] == "hosted"), {"requests": 0})

    deadline = time.monotonic() + 30
    while ledgered()["requests"] < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    row = ledgered()
    assert row["requests"] >= 4 and row["cache_hits"] == 0, row  # each answer, once
    # the ledger's own records, at the provider's prices (no cached-token price is set)
    assert "cached_input_per_1m" not in PRICES
    ledger_price = (row["prompt_tokens"] * PRICES["input_per_1m"]
                    + row["completion_tokens"] * PRICES["output_per_1m"]) / 1e6
    assert row["cost_usd"] == pytest.approx(ledger_price, rel=1e-6, abs=1e-9), row


def test_a_provider_down_or_stalled_fails_over_and_comes_back(stack) -> None:
    url, proxy = stack["url"], stack["proxy"]
    assert _ask(url).headers["x-sluice-model"] == "hosted"
    proxy.refuse(True)
    proxy.reset()  # the pooled connections too: the provider is gone
    try:
        started = time.monotonic()
        answers = [_ask(url) for _ in range(THRESHOLD + 2)]
        took = time.monotonic() - started
    finally:
        proxy.pass_through()
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers]
    assert {r.headers["x-sluice-model"] for r in answers} == {"small"}
    assert {r.headers["x-sluice-failover"] for r in answers} == {"hosted"}
    print(f"{len(answers)} answers with the provider down took {took:.1f} s")

    # put aside: while its cooldown lasts it is not tried, though it is back now
    aside = _ask(url)
    assert aside.headers["x-sluice-model"] == "small", aside.headers
    time.sleep(COOLDOWN_S + 1)
    back = _ask(url)
    assert back.status_code == 200 and back.headers["x-sluice-model"] == "hosted"
    assert "x-sluice-failover" not in back.headers

    proxy.set_latency(FIRST_BYTE_S + 2)  # slower than its first-byte bound
    try:
        started = time.monotonic()
        stalled = _ask(url, stream=True)
        took = time.monotonic() - started
    finally:
        proxy.pass_through()
    assert stalled.status_code == 200 and stalled.headers["x-sluice-model"] == "small"
    assert stalled.text.rstrip().endswith("data: [DONE]") and '"error"' not in stalled.text
    assert took < FIRST_BYTE_S + 30, took  # its bound, then small's answer
    print(f"a stalled provider's stream was answered by small after {took:.1f} s")

    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'sluice_failovers_total{model="hosted",to="small"}' in metrics


def test_a_model_behind_anthropics_api_answers_as_the_openai_one_does(stack) -> None:
    url = stack["url"]
    ask = [{"role": "system", "content": "You answer briefly."},
           {"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] Name a river."}]
    gpt = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    replies = {}
    for model in ("hosted", "claude"):
        raw = gpt.chat.completions.with_raw_response.create(
            model=model, max_tokens=8, temperature=0, messages=ask)
        assert raw.headers["x-sluice-model"] == model, raw.headers
        replies[model] = raw.parse()
        usage = replies[model].usage
        price = (usage.prompt_tokens * PRICES["input_per_1m"]
                 + usage.completion_tokens * PRICES["output_per_1m"]) / 1e6
        assert float(raw.headers["x-sluice-cost-usd"]) == pytest.approx(price, rel=1e-6)
    # the same weights behind both APIs, greedy: the same answer, the same prompt counted
    assert replies["claude"].choices[0].message.content == \
        replies["hosted"].choices[0].message.content
    assert replies["claude"].usage.prompt_tokens == replies["hosted"].usage.prompt_tokens
    assert replies["claude"].usage.completion_tokens == \
        replies["hosted"].usage.completion_tokens

    chunks = list(gpt.chat.completions.create(
        model="claude", max_tokens=8, temperature=0, messages=ask, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == replies["claude"].choices[0].message.content
    assert chunks[-1].usage.completion_tokens == replies["claude"].usage.completion_tokens

    claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120)
    message = claude.messages.create(model="claude", max_tokens=8, system="You answer "
                                     "briefly.", messages=ask[1:], extra_body={"temperature": 0})
    assert message.content[0].text == replies["claude"].choices[0].message.content
    completion = httpx.post(f"{url}/v1/completions", timeout=60,
                            json={"model": "claude", "prompt": "hi", "max_tokens": 4})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "model"


def test_a_providers_429_puts_it_aside_for_its_retry_after(stack) -> None:
    url, faults = stack["url"], stack["faults"]
    assert _ask(url, "claude").headers["x-sluice-model"] == "claude"
    aside_s = 6
    faults.answer(429, retry_after_s=aside_s, times=1)
    limited_at = time.monotonic()
    first = _ask(url, "claude")
    assert first.status_code == 200, first.text
    assert first.headers["x-sluice-model"] == "small"
    assert first.headers["x-sluice-failover"] == "claude"
    assert faults.faulted >= 1
    # one failure, under the breaker's threshold (2): the Retry-After alone put it aside
    during = _ask(url, "claude")
    ready = httpx.get(f"{url}/readyz", timeout=30).json()
    assert during.headers["x-sluice-model"] == "small", during.headers
    assert time.monotonic() - limited_at < aside_s, "too slow to see the aside period"
    assert ready["providers"]["claude"] == "aside" and ready["status"] == "ready"
    time.sleep(max(0.0, aside_s + 1 - (time.monotonic() - limited_at)))
    back = _ask(url, "claude")
    assert back.headers["x-sluice-model"] == "claude" and "x-sluice-failover" not in back.headers
    assert httpx.get(f"{url}/readyz", timeout=30).json()["providers"] == {
        "hosted": "ready", "claude": "ready"}


def test_a_cascade_puts_the_hosted_model_behind_small_and_its_answers_are_cached(stack) -> None:
    url = stack["url"]
    accepted = _ask(url, "mix-accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["x-sluice-model"] == "small"
    assert accepted.headers["x-sluice-route"] == "small"
    escalated = _ask(url, "mix-escalate")
    assert escalated.status_code == 200, escalated.text
    assert escalated.headers["x-sluice-model"] == "hosted"
    assert escalated.headers["x-sluice-route"] == "small>large"
    stages = escalated.json()["usage"]["cost"]["stages"]
    assert [s["model"] for s in stages] == ["small", "hosted"]  # the draft, then the answer
    hosted_usage = escalated.json()["usage"]
    assert stages[1]["usd"] == pytest.approx(
        (hosted_usage["prompt_tokens"] * PRICES["input_per_1m"]
         + hosted_usage["completion_tokens"] * PRICES["output_per_1m"]) / 1e6, rel=1e-6)

    # the exact-match cache answers a hosted model's repeated greedy request, at no cost
    body = {"model": "hosted", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] Cache me."}]}
    first = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert first.status_code == 200 and first.headers["x-sluice-cache"] == "miss"
    again = None
    for _ in range(5):  # the entry is stored after the answer; the lookup is bounded
        again = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        if again.headers["x-sluice-cache"] == "hit":
            break
        time.sleep(0.5)
    assert again is not None and again.headers["x-sluice-cache"] == "hit", again.headers
    assert again.json()["choices"] == first.json()["choices"]
    assert float(again.headers["x-sluice-cost-usd"]) == 0


def test_a_provider_killed_under_load_fails_over_with_no_failed_request(stack) -> None:
    """Last in this module: the stand-in provider's processes are SIGKILLed (as a crashed
    host ends) under open-loop load on `hosted`, half of it streamed. Every request is
    answered: by `hosted` before the kill, by `small` after it (the chain moves on before
    any byte reached the client). A stream the provider was already sending when it died
    cannot move (its bytes are out): it ends with an error event and [DONE], the one
    retriable failure allowed, and only for a stream in flight at the kill."""
    time.sleep(COOLDOWN_S + 1)  # earlier tests may have left it aside
    result = killed(stack["stack"], rate=3.0, seconds=20.0, kill_at=6.0)
    rows = result["requests"]
    assert len(rows) >= 30, result["outcomes"]
    assert all(r["status"] == 200 for r in rows), [r for r in rows if r["status"] != 200]
    for r in rows:
        if r.get("error_event"):  # cut mid-stream: in flight at the kill, properly ended
            assert r["stream"] and r["start"] < 0 < r["end"] and r["done"], r
        elif r["start"] > 0.5:  # sent after the kill: the chain's next backend answers
            assert r["model"] == "small" and r["failover"] == "hosted", r
    assert any(r["model"] == "hosted" and r["end"] < 0 for r in rows)
    assert result["kill_to_first_small_answer_ms"] is not None
    # the dead provider is put aside by the breaker: later requests do not wait on it
    assert httpx.get(f"{stack['url']}/readyz", timeout=30).json()["providers"]["hosted"] \
        in ("aside", "unavailable")
    print(f"killed: {json.dumps({k: v for k, v in result.items() if k != 'requests'})}")
