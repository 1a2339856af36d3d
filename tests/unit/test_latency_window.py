"""Replica-side latency reporting for the autoscaler."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from sluice.autoscaling.latency import LatencyWindow, timed


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_window_reports_p95s_and_forgets_old_samples() -> None:
    clock = Clock()
    window = LatencyWindow(window_s=30, clock=clock)
    assert window.stats() == {}
    for i in range(20):
        window.record(0.1 * (i + 1), 0.01)
    stats = window.stats()
    assert stats["ttft_p95_s"] == pytest.approx(1.905)
    assert stats["tpot_p95_s"] == pytest.approx(0.01) and stats["latency_age_s"] == 0
    clock.t = 31
    assert window.stats() == {}


def test_timed_stream_counts_content_chunks_and_relays_unchanged() -> None:
    clock = Clock()
    window = LatencyWindow(clock=clock)

    def sse(content):
        return "data: " + json.dumps({"choices": [{"delta": {"content": content}}]}) + "\n\n"

    items = [[sse("")], [sse("a"), sse("b")], [sse("c")], ["data: [DONE]\n\n"]]

    async def engine():
        for item in items:
            clock.t += 0.5
            yield item

    async def run():
        return [item async for item in timed(engine(), window, clock)]

    assert asyncio.run(run()) == items
    stats = window.stats()
    assert stats["ttft_p95_s"] == pytest.approx(0.5)
    assert stats["tpot_p95_s"] == pytest.approx((2.0 - 0.5) / 2)  # 3 tokens


def test_timed_whole_response_uses_its_usage() -> None:
    clock = Clock()
    window = LatencyWindow(clock=clock)
    response = SimpleNamespace(usage=SimpleNamespace(completion_tokens=11))

    async def engine():
        clock.t += 2.0
        yield response

    async def run():
        return [item async for item in timed(engine(), window, clock)]

    assert asyncio.run(run()) == [response]
    stats = window.stats()
    assert "ttft_p95_s" not in stats  # not observable without streaming
    assert stats["tpot_p95_s"] == pytest.approx(2.0 / 11)


def test_rejections_are_relayed_but_not_timed() -> None:
    window = LatencyWindow()
    items = [['data: {"error": {"message": "too long", "code": 400}}\n\n']]

    async def engine():
        for item in items:
            yield item

    async def run():
        return [item async for item in timed(engine(), window)]

    assert asyncio.run(run()) == items and window.stats() == {}
