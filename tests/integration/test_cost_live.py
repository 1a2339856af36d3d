"""Every answer through the real stack reports its cost, priced from the catalog; a
response-cache hit is free; the cost counter at /metrics grows by exactly what the answers
reported."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.accounting.cost import cost_usd
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]


def _spent(http, model: str) -> float:
    text = http.get("/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "sluice_cost_usd_total" and s.labels.get("model") == model)


def test_answers_report_their_cost_and_the_counter_sums_them(http) -> None:
    catalog = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT).catalog
    pricing = {m.name: m.pricing for m in catalog.models}
    before = {m: _spent(http, m) for m in ("small", "large")}
    reported = {"small": 0.0, "large": 0.0}
    for model in ("small", "large"):
        body = {"model": model, "max_tokens": 5, "temperature": 0,
                "messages": [{"role": "user", "content": f"cost probe {uuid.uuid4().hex}"}]}
        first = http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        usage = first.json()["usage"]
        expected = cost_usd(usage, pricing[model])
        assert expected > 0
        assert usage["cost"] == {"total_usd": pytest.approx(expected), "currency": "USD",
                                 "source": "engine"}
        assert float(first.headers["x-sluice-cost-usd"]) == pytest.approx(expected, abs=1e-9)
        reported[model] += float(first.headers["x-sluice-cost-usd"])
        for _ in range(50):  # the answer is stored off the hot path: bounded wait for a hit
            again = http.post("/v1/chat/completions", json=body)
            reported[model] += float(again.headers["x-sluice-cost-usd"])
            if again.headers["x-sluice-cache"] == "hit":
                break
            time.sleep(0.1)
        assert again.headers["x-sluice-cache"] == "hit"
        assert again.json()["usage"]["cost"]["source"] == "response_cache"
        assert float(again.headers["x-sluice-cost-usd"]) == 0.0
    stream_body = {"model": "small", "max_tokens": 5, "stream": True,
                   "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": f"streamed {uuid.uuid4().hex}"}]}
    with http.stream("POST", "/v1/chat/completions", json=stream_body,
                     headers={"cache-control": "no-store"}) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines()
                  if line.startswith("data: {")]
    usage = next(e["usage"] for e in events if e.get("usage"))
    assert usage["cost"]["total_usd"] == pytest.approx(cost_usd(usage, pricing["small"]))
    reported["small"] += usage["cost"]["total_usd"]
    for model in ("small", "large"):
        assert _spent(http, model) - before[model] == pytest.approx(reported[model], abs=1e-9)
