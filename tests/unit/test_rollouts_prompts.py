"""Rollouts of a prompt template's versions (`prompt:support` -> `support@v2`) through the
whole framework-free request path against a real Redis: the template the engine reads, the
answer naming the version, the observations the gates judge, and the ledger."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer

from sluice.accounting.accountant import Accountant
from sluice.accounting.response_cost import UsagePricer
from sluice.cache_tier.redis_target import async_client
from sluice.deployments.http import render
from sluice.errors import InvalidRequest, ModelNotFound, NotFound, Unavailable
from sluice.observability.metrics import Metrics
from sluice.pipeline.answer_cache import AnswerCache
from sluice.pipeline.answering import Pipeline
from sluice.pipeline.background import Background
from sluice.pipeline.engines import EngineStream
from sluice.pipeline.handler import RequestHandler
from sluice.pipeline.prompt_stage import PromptStage
from sluice.pipeline.request import RequestLimits
from sluice.rollouts.controller import Rollouts
from sluice.rollouts.store import RolloutStore
from sluice.rollouts.targets import always_served, versions
from sluice.router.static import StaticRouter
from sluice.schema.accounting import AccountingConfig
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig
from sluice.schema.loading import load_platform_config
from sluice.schema.rollouts import RolloutSettings, RolloutSpec

ROOT = Path(__file__).resolve().parents[2]
BASE = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
PROMPTS = {"support": {"system": "You are the support assistant of Acme."},
           "support@v2": {"system": "You are Acme's support assistant. BROKEN", "replace": True}}
GATES = {"min_requests": 20, "latency_quantile": 0.5, "ttft_max_ratio": 5.0,
         "tpot_max_ratio": 5.0, "error_margin": 0.1}
USAGE = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


def config(**prompts: Any) -> Any:
    profile = BASE.profile.model_validate({**BASE.profile.model_dump(),
                                           "prompts": prompts or PROMPTS})
    return BASE.model_copy(update={"profile": profile})


class _Response:
    def __init__(self, model: str, system: str) -> None:
        self._d = {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": model,
                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                       "role": "assistant", "content": f"told: {system}"}}],
                   "usage": dict(USAGE)}

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return json.loads(json.dumps(self._d))


async def _none():
    return
    yield


class FakeEngines:
    """Whole answers that say the system message they read; a broken template (its text
    says BROKEN) makes the engine fail, when told to."""

    def __init__(self, broken_fails: bool = False) -> None:
        self.broken_fails = broken_fails
        self.systems: list[list[str]] = []

    def __contains__(self, model: object) -> bool:
        return model in ("small", "large")

    async def call(self, model: str, endpoint: str, request: Any) -> EngineStream:
        systems = [m["content"] for m in request.messages if m["role"] == "system"]
        self.systems.append(systems)
        if self.broken_fails and any("BROKEN" in s for s in systems):
            raise Unavailable("the engine failed")
        return EngineStream(model, _Response(model, " | ".join(systems)), _none(), "r-1")

    call_chain = call


class Stack:
    def __init__(self, redis_url: str, engines: FakeEngines) -> None:
        self.background, self.engines = Background(), engines
        cfg = config()
        cache = AnswerCache(ResponseCacheConfig(enabled=False), SemanticCacheConfig(), None,
                            lambda: None, self.background.spawn,  # type: ignore[arg-type]
                            NoOpTracer())
        metrics = Metrics()
        self.accountant = Accountant(AccountingConfig(), redis_url, self.background.spawn,
                                     metrics)
        self.rollouts = Rollouts(RolloutSettings(), RolloutStore(async_client(redis_url, 1.0)),
                                 versions(cfg), {"small", "large"} | always_served(cfg),
                                 rng=random.Random(1))
        pipeline = Pipeline(StaticRouter(cfg.catalog, "small"), {}, engines,  # type: ignore[arg-type]
                            cache, self.accountant.guard, NoOpTracer(),
                            spawn=self.background.spawn, rollouts=self.rollouts)
        pricer = UsagePricer({m.name: m.pricing for m in cfg.catalog.models})
        self.handler = RequestHandler(pipeline, self.accountant, pricer, metrics,
                                      RequestLimits(8, 4096), 1 << 20, rollouts=self.rollouts,
                                      prompts=PromptStage(cfg.profile.prompts, self.rollouts))

    async def ask(self, user: str, prompt: str | None = "support") -> Any:
        async def body():
            yield json.dumps({"model": "small", "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Where is my parcel?"}]}).encode()

        headers = {"x-sluice-user": user, **({"x-sluice-prompt": prompt} if prompt else {})}
        return render(await self.handler.handle("chat", headers, body(), f"req-{user}"))

    async def close(self) -> None:
        await self.rollouts.flush()
        await self.rollouts.close()
        await self.accountant.close()


def test_an_ab_split_of_a_template_names_its_version_and_is_measured_and_recorded(
        redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines())
        await stack.rollouts.begin(RolloutSpec(model="prompt:support", to="v2", kind="ab",
                                               percent=50))
        got = {}
        for i in range(60):
            response = await stack.ask(f"user-{i}")
            got[i] = response.headers["x-sluice-prompt-variant"]
            text = json.loads(bytes(response.body))["choices"][0]["message"]["content"]
            if got[i] == "v2":  # replaces the client's system message
                assert text == "told: You are Acme's support assistant. BROKEN"
            else:  # goes first, the client's after it
                assert text == "told: You are the support assistant of Acme. | Answer in French."
            assert response.headers["x-sluice-variant"] == "v1"  # the model's, unchanged
        v2 = list(got.values()).count("v2")
        assert 15 < v2 < 45
        assert (await stack.ask("user-7")).headers["x-sluice-prompt-variant"] == got[7]
        plain = await stack.ask("nobody", prompt=None)
        assert "x-sluice-prompt-variant" not in plain.headers
        await stack.rollouts.flush()
        status = await stack.rollouts.status("prompt:support")
        arms = status["measured"]["arms"]
        assert arms["candidate"]["model"] == "prompt:support@v2"
        assert arms["candidate"]["requests"] + arms["baseline"]["requests"] == 61
        assert stack.accountant.ledger is not None
        await stack.accountant.ledger.flush()
        usage = await stack.accountant.usage({}, {"group_by": "variant"})
        groups = {row["group"]: row["requests"] for row in usage["data"]}
        assert groups == {"prompt:support@v2": arms["candidate"]["requests"],
                          "prompt:support": arms["baseline"]["requests"], "(none)": 1}
        await stack.close()

    asyncio.run(run())


def test_a_template_version_that_makes_answers_fail_is_rolled_back(redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines(broken_fails=True))
        await stack.rollouts.begin(RolloutSpec.model_validate(
            {"model": "prompt:support", "to": "v2", "steps": [50, 100], "step_s": 60,
             "max_step_s": 600, "gates": GATES}))
        failed = 0
        for i in range(80):
            try:
                assert (await stack.ask(f"user-{i}")).headers[
                    "x-sluice-prompt-variant"] == "v1"
            except Unavailable:
                failed += 1
        assert 20 <= failed <= 60
        await stack.rollouts.flush()
        await stack.rollouts.judge()
        status = await stack.rollouts.status("prompt:support")
        assert status["status"] == "rolled_back", status["canary"]["gates"]
        assert status["reason"].startswith(f"error_rate: canary 100.00% of {failed}")
        assert (await stack.ask("user-1")).headers["x-sluice-prompt-variant"] == "v1"
        await stack.close()

    asyncio.run(run())


def test_a_templates_rollout_names_an_existing_version_and_a_request_an_existing_template(
        redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines())
        with pytest.raises(ModelNotFound, match="no variant 'prompt:support@v9'"):
            await stack.rollouts.begin(RolloutSpec(model="prompt:support", to="v9"))
        with pytest.raises(ModelNotFound, match="no model 'prompt:sales'"):
            await stack.rollouts.begin(RolloutSpec(model="prompt:sales", to="v2"))
        with pytest.raises(ModelNotFound):  # the template's name alone is not a model
            await stack.rollouts.begin(RolloutSpec(model="support", to="v2"))
        # nothing copies a request to another template version: no shadow, no quality gate
        with pytest.raises(InvalidRequest) as refused:
            await stack.rollouts.begin(RolloutSpec(model="prompt:support", to="v2",
                                                   kind="shadow", percent=10))
        assert refused.value.param == "kind"
        with pytest.raises(InvalidRequest) as refused:
            await stack.rollouts.begin(RolloutSpec.model_validate(
                {"model": "prompt:support", "to": "v2", "gates": {"min_agreement": 0.9}}))
        assert refused.value.param == "gates.min_agreement"
        with pytest.raises(NotFound) as info:
            await stack.ask("u", prompt="sales")
        assert info.value.code == "prompt_not_found"
        assert stack.engines.systems == []  # refused before any engine
        await stack.close()

    asyncio.run(run())


def test_the_cli_starts_a_templates_rollout_with_prompt(monkeypatch, capsys) -> None:
    import argparse

    from sluice import rollout_cli

    sent: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(rollout_cli, "_call",
                        lambda args, method, path, body=None: sent.append((method, path, body))
                        or 0)
    parser = argparse.ArgumentParser()
    rollout_cli.add_commands(parser.add_subparsers(dest="command"))

    def start(*argv: str) -> int:
        args = parser.parse_args(["rollout", "start", *argv])
        return int(args.func(args))

    assert start("--prompt", "support", "--to", "v2", "--kind", "ab", "--percent", "20") == 0
    assert sent[-1] == ("POST", "", {"model": "prompt:support", "to": "v2", "kind": "ab",
                                     "percent": 20.0})
    assert start("auto", "--to", "v2", "--steps", "10,100") == 0  # a route, as a model
    assert sent[-1][2] == {"model": "auto", "to": "v2", "kind": "canary", "steps": [10, 100]}
    assert start("--to", "v2") == 2 and start("auto", "--prompt", "support", "--to", "v2") == 2
    assert len(sent) == 2 and "one of them" in capsys.readouterr().err
