"""Rollouts at the ingress against a real Redis: the split, the measurements, the judging,
the admin operations, and two replicas (or a restarted one) sharing one state."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from sluice.cache_tier.redis_target import async_client
from sluice.errors import (Conflict, InternalError, InvalidRequest, ModelNotFound, NotFound,
                           Unavailable)
from sluice.observability.outcome import Outcome
from sluice.rollouts import state as ops
from sluice.rollouts.canary import Window
from sluice.rollouts.controller import Rollouts
from sluice.rollouts.state import Rollout
from sluice.rollouts.store import RolloutStore
from sluice.schema.rollouts import RolloutSettings, RolloutSpec

MODELS = {"small": ("small", "v1"), "small@v2": ("small", "v2"), "small@v3": ("small", "v3"),
          "large": ("large", "v1")}
GATES = {"min_requests": 20, "latency_quantile": 0.5, "ttft_max_ratio": 2.0,
         "tpot_max_ratio": 2.0, "error_margin": 0.1}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def controller(url: str, clock: Clock, events: list | None = None) -> Rollouts:
    store = RolloutStore(async_client(url, 1.0))
    sink = events if events is not None else []
    return Rollouts(RolloutSettings(poll_s=0.05, evaluate_s=0.05), store, MODELS,
                    set(MODELS), on_event=lambda r, e: sink.append((r.model, e)),
                    clock=clock, rng=random.Random(1))


def outcome(model: str, status: int = 200, ttft: float = 0.05, tokens: int = 8,
            tpot: float = 0.01) -> Outcome:
    o = Outcome(status, model, "direct", "miss", started=0.0)
    if status == 200:
        o.first_token_at = ttft
        o.ended = ttft + tpot * (tokens - 1)
        o.usage = {"completion_tokens": tokens}
    return o


def canary_spec(**kw) -> RolloutSpec:
    return RolloutSpec.model_validate({"model": "small", "to": "v2", "steps": [50, 100],
                                       "step_s": 10, "max_step_s": 100, "gates": GATES, **kw})


def test_a_rollout_round_trips_through_its_json() -> None:
    r = ops.begin("small-v2-x", canary_spec(), "small", 5.0)
    judged = ops.evaluate(r, 20.0, Window(40, 0, (0.1,) * 40, (0.01,) * 40),
                          Window(40, 0, (0.1,) * 40, (0.01,) * 40))
    assert judged.status == "promoted"
    assert Rollout.from_json(judged.to_json()) == judged
    ab = ops.begin("small-v2-y", RolloutSpec(model="small", to="v2", kind="ab", percent=30),
                   "small", 5.0)
    assert Rollout.from_json(ab.to_json()) == ab


def test_an_ab_split_matches_its_share_and_keeps_each_user_in_one_arm(redis_url) -> None:
    rollouts = controller(redis_url, Clock())
    r = ops.begin("small-v2-ab", RolloutSpec(model="small", to="v2", kind="ab", percent=30),
                  "small", 0.0)
    rollouts.restored({"small": r})
    arms = Counter(rollouts.route("small", f"h:user-{i}") for i in range(4000))
    assert abs(arms["small@v2"] / 4000 - 0.30) < 0.03  # 3 sigma is 0.022
    assert all(rollouts.route("small", f"h:user-{i}") == rollouts.route("small", f"h:user-{i}")
               for i in range(200))
    assert rollouts.route("large", "h:user-1") == "large"  # not under rollout


def test_a_canarys_users_keep_the_candidate_as_its_share_grows(redis_url) -> None:
    rollouts = controller(redis_url, Clock())
    spec = canary_spec(steps=[10, 50, 100])
    r = ops.begin("small-v2-c", spec, "small", 0.0)
    rollouts.restored({"small": r})
    at_10 = {s for s in (f"h:u{i}" for i in range(2000)) if rollouts.route("small", s) != "small"}
    grown = ops.evaluate(r, 11.0, Window(40, 0, (0.1,) * 40, (0.01,) * 40),
                         Window(40, 0, (0.1,) * 40, (0.01,) * 40))
    assert grown.share() == 0.5
    rollouts.restored({"small": grown})
    at_50 = {s for s in (f"h:u{i}" for i in range(2000)) if rollouts.route("small", s) != "small"}
    assert at_10 < at_50 and 150 < len(at_10) < 250


async def _feed(rollouts: Rollouts, model: str, n: int, **kw) -> None:
    for _ in range(n):
        rollouts.observe(outcome(model, **kw))
    await rollouts.flush()


def test_a_healthy_canary_is_promoted_and_its_baseline_drained(redis_url) -> None:
    async def run() -> None:
        clock, events = Clock(), []
        rollouts = controller(redis_url, clock, events)
        view = await rollouts.begin(canary_spec())
        assert view["status"] == "running" and view["share_percent"] == 50
        await _feed(rollouts, "small", 40)
        await _feed(rollouts, "small@v2", 40)
        await rollouts.judge()
        assert (await rollouts.status("small"))["status"] == "running"  # step_s not over
        clock.now += 11
        await rollouts.judge()
        status = await rollouts.status("small")
        assert status["status"] == "promoted", status
        assert rollouts.route("small", "h:anyone") == "small@v2"
        assert ("small", "promoted") in events
        clock.now += 1
        await rollouts.refresh()
        await rollouts.judge()
        status = await rollouts.status("small")
        assert status["retired"].startswith("drained: no requests go to small")
        # a new ingress replica (or a restarted one) reads where the fleet is
        fresh = controller(redis_url, clock)
        await fresh.refresh()
        assert fresh.route("small", "h:anyone") == "small@v2"
        await rollouts.close()

    asyncio.run(run())


def test_failures_and_latency_on_the_candidate_roll_it_back_with_the_reason(redis_url
                                                                             ) -> None:
    async def run() -> None:
        clock, events = Clock(), []
        rollouts = controller(redis_url, clock, events)
        await rollouts.begin(canary_spec(step_s=60, max_step_s=600))
        await _feed(rollouts, "small", 40)
        for i in range(40):  # 40% of the candidate's calls fail before answering
            if i % 5 < 2:
                rollouts.failed("small@v2", InternalError("engine bug"))
            else:
                rollouts.observe(outcome("small@v2"))
        rollouts.failed("small@v2", InvalidRequest("a client's mistake"))  # not counted
        await rollouts.flush()
        await rollouts.judge()  # a breach needs no step_s
        status = await rollouts.status("small")
        assert status["status"] == "rolled_back"
        assert status["reason"].startswith("error_rate: canary 40.00% of 40")
        assert status["measured"]["arms"]["candidate"]["requests"] == 40
        assert rollouts.route("small", "h:anyone") == "small"
        assert ("small", "rolled_back") in events

        rollouts2 = controller(redis_url, clock)
        await rollouts2.begin(canary_spec(to="v3", step_s=60, max_step_s=600))
        await _feed(rollouts2, "small", 40, ttft=0.05)
        await _feed(rollouts2, "small@v3", 40, ttft=0.5)  # 10x slower first token
        await rollouts2.judge()
        status = await rollouts2.status("small")
        assert status["status"] == "rolled_back" and status["reason"].startswith("ttft:")
        await rollouts.close()
        await rollouts2.close()

    asyncio.run(run())


def test_the_admin_operations_and_their_refusals(redis_url) -> None:
    async def run() -> None:
        clock = Clock()
        rollouts = controller(redis_url, clock)
        with pytest.raises(ModelNotFound, match="no variant 'small@v9'"):
            await rollouts.begin(canary_spec(to="v9"))
        with pytest.raises(ModelNotFound, match="no model 'medium'"):
            await rollouts.begin(RolloutSpec(model="medium", to="v2"))
        with pytest.raises(InvalidRequest, match="'small@v2' is a variant"):
            await rollouts.begin(RolloutSpec(model="small@v2", to="v3"))
        with pytest.raises(NotFound):
            await rollouts.status("small")
        await rollouts.begin(RolloutSpec(model="small", to="v2", kind="ab", percent=20))
        with pytest.raises(Conflict, match="already has a rollout running"):
            await rollouts.begin(canary_spec())
        assert (await rollouts.act("small", "pause"))["status"] == "paused"
        assert rollouts.route("small", "h:x") in ("small", "small@v2")
        with pytest.raises(Conflict, match="cannot pause"):
            await rollouts.act("small", "pause")
        assert (await rollouts.act("small", "resume"))["status"] == "running"
        assert (await rollouts.act("small", "abort"))["status"] == "aborted"
        with pytest.raises(NotFound, match="Unknown rollout action"):
            await rollouts.act("small", "explode")
        # an ended rollout may be followed by a new one
        assert (await rollouts.begin(canary_spec()))["status"] == "running"
        await rollouts.close()

    asyncio.run(run())


def test_a_write_based_on_a_stale_read_is_refused(redis_url) -> None:
    async def run() -> None:
        store = RolloutStore(async_client(redis_url, 1.0))
        r = await store.put(ops.begin("small-v2-z", canary_spec(), "small", 0.0), None)
        assert r is not None and r.version == 1
        assert await store.put(ops.pause(r, 1.0), r.version) is not None
        assert await store.put(ops.abort(r, 2.0), r.version) is None  # r is stale now
        assert (await store.get("small")).status == "paused"

    asyncio.run(run())


def test_without_redis_the_admin_api_says_so_and_requests_go_to_the_model() -> None:
    rollouts = Rollouts(RolloutSettings(), None, MODELS, set(MODELS))
    assert rollouts.route("small", "h:x") == "small"
    with pytest.raises(Unavailable, match="Redis"):
        asyncio.run(rollouts.list())


def test_a_canary_whose_answers_disagree_with_the_baselines_is_rolled_back(redis_url) -> None:
    async def run() -> None:
        clock = Clock()
        rollouts = controller(redis_url, clock)
        gates = {**GATES, "min_agreement": 0.8, "quality_sample": 1.0, "min_pairs": 20}
        r_view = await rollouts.begin(canary_spec(step_s=60, max_step_s=600, gates=gates))
        assert rollouts.compare_for("small", "small") is None  # the baseline's: not compared
        sampled = rollouts.compare_for("small", "small@v2")
        assert sampled is not None and sampled[1] == "small"  # a copy goes to the baseline
        rollout = sampled[0]

        async def copy() -> tuple[str, int]:
            return "the baseline says four", 4

        for i in range(30):  # 30% agree
            async def told(i=i) -> tuple[str, int, float]:
                return ("the baseline says four" if i % 10 < 3 else "noise noise noise"), 3, 0.2

            await rollouts.shadowed(rollout, copy(), told(), lambda a, b: a == b,
                                    copy_is_candidate=False)
        await _feed(rollouts, "small", 40)
        await _feed(rollouts, "small@v2", 40)
        await rollouts.judge()
        status = await rollouts.status("small")
        assert status["status"] == "rolled_back", status["canary"]["gates"]
        assert status["reason"].startswith("agreement: the canary agreed with the baseline "
                                           "on 9 of 30"), status["reason"]
        assert status["shadow"]["pairs"] == 30
        assert r_view["spec"]["gates"]["min_agreement"] == 0.8
        await rollouts.close()

    asyncio.run(run())


def test_every_compared_pair_and_every_skipped_sample_reaches_the_metrics_hook(redis_url
                                                                              ) -> None:
    async def run() -> None:
        seen: list[tuple[str, object]] = []
        store = RolloutStore(async_client(redis_url, 1.0))
        rollouts = Rollouts(RolloutSettings(poll_s=0.05, shadow_max_in_flight=1), store,
                            MODELS, set(MODELS), rng=random.Random(1),
                            on_compared=lambda r, pair: seen.append((r.candidate, pair)))
        await rollouts.begin(RolloutSpec.model_validate(
            {"model": "small", "to": "v2", "kind": "shadow", "percent": 100}))
        sampled = rollouts.compare_for("small", "small")
        assert sampled is not None
        rollout, copy_to = sampled
        gate: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

        async def copy() -> tuple[str, int]:
            return await gate

        async def told() -> tuple[str, int, float]:
            return "same words", 2, 0.5

        pending = asyncio.ensure_future(rollouts.shadowed(rollout, copy(), told(),
                                                          lambda a, b: a == b))
        await asyncio.sleep(0)  # one copy in flight: the bound (1) is reached
        assert rollouts.compare_for("small", "small") is None
        gate.set_result(("same words", 2))
        await pending
        assert [c for c, _ in seen] == ["small@v2", "small@v2"]
        assert seen[0][1] is None  # skipped
        pair = seen[1][1]
        assert pair.agreed is True and pair.baseline_s == 0.5 and not pair.candidate_error
        await rollouts.close()

    asyncio.run(run())


def test_the_judge_reads_only_whats_new_and_a_dead_store_is_a_503(redis_server, redis_url
                                                                   ) -> None:
    async def run() -> None:
        clock = Clock()
        rollouts = controller(redis_url, clock)
        await rollouts.begin(canary_spec(step_s=60, max_step_s=600))
        r = (await rollouts._store.all())[0]["small"]
        await _feed(rollouts, "small", 3)
        assert len(await rollouts._step(r)) == 3
        await _feed(rollouts, "small@v2", 2)
        seen = await rollouts._step(r)
        assert [o.model for o in seen] == ["small"] * 3 + ["small@v2"] * 2  # 3 kept, 2 read
        redis_server.stop()
        with pytest.raises(Unavailable, match="store"):
            await rollouts.status("small")
        assert rollouts.route("small", "h:x") in ("small", "small@v2")  # no Redis needed

    asyncio.run(run())


def test_a_rollout_declared_in_the_profile_starts_once(redis_url) -> None:
    async def run() -> None:
        clock = Clock()
        spec = RolloutSpec(model="small", to="v2", kind="ab", percent=10)
        settings = RolloutSettings(start=(spec,))
        store = RolloutStore(async_client(redis_url, 1.0))
        rollouts = Rollouts(settings, store, MODELS, set(MODELS), clock=clock)
        await rollouts.declared()
        assert (await rollouts.status("small"))["status"] == "running"
        await rollouts.act("small", "abort")
        again = Rollouts(settings, store, MODELS, set(MODELS), clock=clock)  # a restart
        await again.declared()
        assert (await again.status("small"))["status"] == "aborted"  # not started again

    asyncio.run(run())
