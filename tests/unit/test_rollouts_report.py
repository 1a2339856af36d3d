"""What a rollout reports (A/B differences with intervals, shadow pairs), who may manage
rollouts, a rollout's request body, an engine's injected faults, and the shadow's reading of
a stream passing it on unchanged."""

from __future__ import annotations

import asyncio
import random

import pytest

from sluice import sse
from sluice.accounting.tenancy import Principal
from sluice.deployments.engine_faults import MESSAGE, faulted
from sluice.deployments.rollout_admin import check_operator, spec_of
from sluice.errors import Forbidden, InvalidRequest, Unauthorized
from sluice.pipeline.answering import _told
from sluice.rollouts.report import Observation, ShadowPair, ab_report, shadow_report, window
from sluice.schema.accounting import ANONYMOUS


def test_the_ab_report_gives_each_arm_and_the_differences_with_intervals() -> None:
    rng = random.Random(3)
    obs = ([Observation("a@v2", rng.random() < 0.10, 0.2 + rng.random() * 0.1, 0.01, 2e-5)
            for _ in range(2000)]
           + [Observation("a", rng.random() < 0.02, 0.1 + rng.random() * 0.1, 0.01, 1e-5)
              for _ in range(2000)])
    report = ab_report(obs, "a@v2", "a")
    arms, diff = report["arms"], report["difference"]
    assert arms["candidate"]["requests"] == arms["baseline"]["requests"] == 2000
    err = diff["error_rate"]
    assert err["low"] < 0.08 < err["high"] and err["low"] > 0  # a real +8 points
    ttft = diff["ttft_mean_s"]
    assert ttft["low"] < 0.1 < ttft["high"]  # the candidate is 100 ms slower on average
    assert diff["cost_per_request_usd"]["difference"] == pytest.approx(1e-5)
    assert window(obs, "a@v2").requests == 2000
    assert len(window(obs, "a@v2").ttft_s) == 2000 - window(obs, "a@v2").errors


def test_observations_and_pairs_survive_their_stream_fields() -> None:
    o = Observation("large@v2", False, 0.123456, None, 3.5e-6)
    assert Observation.from_fields({k.encode(): v.encode() for k, v in o.fields().items()}) == o
    p = ShadowPair(None, True, 0.5, 0.7, 12, 0)
    assert ShadowPair.from_fields(p.fields()) == p


def test_the_shadow_report_counts_agreement_errors_and_ratios() -> None:
    pairs = [ShadowPair(True, False, 1.0, 1.5, 10, 12)] * 8 + [
        ShadowPair(False, False, 1.0, 2.0, 10, 8), ShadowPair(None, True, 1.0, 30.0, 10, 0)]
    report = shadow_report(pairs)
    assert report["pairs"] == 10 and report["candidate_errors"] == 1
    assert report["agreement"]["rate"] == pytest.approx(8 / 9)
    assert report["agreement"]["low"] < 8 / 9 < report["agreement"]["high"]
    assert report["latency_ratio_p50"] == 1.5
    assert report["tokens_ratio"] == pytest.approx(104 / 90)


def test_rollouts_need_an_admin_where_keys_are_required() -> None:
    anonymous = Principal(ANONYMOUS, "default")
    check_operator(anonymous, keys_required=False)  # the local make serve
    with pytest.raises(Unauthorized):
        check_operator(anonymous, keys_required=True)
    with pytest.raises(Forbidden):
        check_operator(Principal("app", "acme"), keys_required=False)
    check_operator(Principal("ops", "platform", admin=True), keys_required=True)


def test_a_rollouts_body_is_checked_field_by_field() -> None:
    spec = spec_of(b'{"model": "large", "to": "v2", "steps": [5, 10, 100]}')
    assert spec.candidate == "large@v2" and spec.steps == (5, 10, 100)
    for body, param in [(b'{"model": "large", "to": "v2", "steps": [50, 10, 100]}', None),
                        (b'{"model": "large", "to": "V2!"}', "to"),
                        (b'{"model": "large", "to": "v2", "kind": "blue-green"}', "kind"),
                        (b'{"model": "large", "to": "v2", "extra": 1}', "extra")]:
        with pytest.raises(InvalidRequest) as err:
            spec_of(body)
        if param:
            assert err.value.param == param
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        spec_of(b"{")


async def _items(stream) -> list:
    return [item async for item in stream]


async def _engine(items: list):
    for item in items:
        yield item


def test_injected_faults_fail_or_delay_a_replicas_requests() -> None:
    async def run() -> None:
        failed = await _items(faulted(_engine([["data: {}\n\n"]]), {"error_fraction": 1.0},
                                      True, random.Random(0)))
        assert sse.is_error(failed[0][0]) and MESSAGE in failed[0][0]
        whole = await _items(faulted(_engine(["x"]), {"error_fraction": 1.0}, False,
                                     random.Random(0)))
        assert whole[0].error.code == 500
        loop = asyncio.get_running_loop()
        started = loop.time()
        kept = await _items(faulted(_engine(["a", "b"]), {"delay_s": 0.2}, False,
                                    random.Random(0)))
        assert kept == ["a", "b"] and loop.time() - started >= 0.2
        rng = random.Random(5)
        answers = [(await _items(faulted(_engine(["ok"]), {"error_fraction": 0.3}, False,
                                         rng)))[0] for _ in range(1000)]
        assert 250 < sum(a != "ok" for a in answers) < 350  # 3.5 sigma

    asyncio.run(run())


def test_a_shadowed_stream_passes_unchanged_and_tells_its_text_at_the_end() -> None:
    chunks = [sse.read('data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
                       'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'),
              sse.read('data: {"choices":[],"usage":{"completion_tokens":2}}\n\n'
                       "data: [DONE]\n\n")]

    async def run() -> None:
        told = asyncio.get_running_loop().create_future()
        passed = [c async for c in _told(_engine(chunks), told, 0.0, lambda: 1.25)]
        assert passed == chunks
        assert told.result() == ("Hello", 2, 1.25)

    asyncio.run(run())
