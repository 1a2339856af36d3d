"""`GET /metrics` on the real stack, parsed with Prometheus's own text parser, moves with the
requests sent: streamed and plain answers, a client error, a cache hit."""

from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families


def _scrape(http) -> dict[tuple[str, frozenset], float]:
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def _get(scrape, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def test_metrics_follow_the_requests(http) -> None:
    before = _scrape(http)
    prompt = f"metrics probe {uuid.uuid4().hex}"
    body = {"model": "small", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 6, "temperature": 0}
    streamed = http.post("/v1/chat/completions", json={
        **body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
    plain = http.post("/v1/chat/completions", json=body)  # same body: now a cache hit
    assert plain.status_code == 200
    assert http.post("/v1/chat/completions", json={"model": "small"}).status_code == 400
    after = _scrape(http)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("gen_ai_server_time_to_first_token_seconds_count", model="small") >= 1
    assert delta("gen_ai_server_request_duration_seconds_count", model="small") >= 2
    # route: the x-sluice-route header, here the model itself (no cascade)
    assert delta("sluice_requests_total", model="small", route="small", status="200") >= 1
    # rejected before a model was chosen: one label for all such requests
    assert delta("sluice_requests_total", model="unrouted", route="error", status="400") >= 1
    assert delta("sluice_tokens_total", model="small", type="input") > 0
    assert delta("sluice_tokens_total", model="small", type="output") >= 1
    assert _get(after, "sluice_in_flight_requests", model="small") == 0
    lookups = sum(v for (n, _), v in after.items() if n == "sluice_cache_lookups_total")
    assert lookups > sum(v for (n, _), v in before.items() if n == "sluice_cache_lookups_total")
