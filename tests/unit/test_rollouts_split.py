"""A rollout's own `split_by` (user, key or tenant) against the profile-wide sticky rule:
who a request is, which subject each rollout hashes, and the tenant taken from the key."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer

from sluice.accounting.accountant import Accountant
from sluice.accounting.response_cost import UsagePricer
from sluice.deployments.http import render
from sluice.observability.metrics import Metrics
from sluice.pipeline.answer_cache import AnswerCache
from sluice.pipeline.answering import Pipeline
from sluice.pipeline.background import Background
from sluice.pipeline.engines import EngineStream
from sluice.pipeline.handler import RequestHandler
from sluice.pipeline.prompt_stage import PromptStage
from sluice.pipeline.request import RequestLimits
from sluice.rollouts import state as ops
from sluice.rollouts.assignment import pick, subjects
from sluice.rollouts.controller import Rollouts
from sluice.router.static import StaticRouter
from sluice.schema.accounting import AccountingConfig
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig
from sluice.schema.loading import load_platform_config
from sluice.schema.prompts import PromptTemplate
from sluice.schema.rollouts import RolloutSettings, RolloutSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
MODELS = {"small": ("small", "v1"), "small@v2": ("small", "v2"),
          "prompt:support": ("prompt:support", "v1"),
          "prompt:support@v2": ("prompt:support", "v2")}


def test_who_a_request_is_each_way_a_rollout_may_split() -> None:
    said = subjects({"x-sluice-user": "ana"}, "key-1", "acme", "req-1", "x-sluice-user",
                    sticky_key=False)
    assert said == {"default": "h:ana", "user": "h:ana", "key": "k:key-1", "tenant": "t:acme"}
    anonymous = subjects({}, "key-1", "acme", "req-1", "x-sluice-user", sticky_key=False)
    assert anonymous["default"] == "r:req-1"  # the profile's rule: split one by one
    assert anonymous["user"] == "k:key-1"  # a user split keeps a caller without one whole
    assert subjects({}, "key-1", "acme", "req-1", "x-sluice-user", True)["default"] == "k:key-1"
    assert pick(said, "tenant") == "t:acme" and pick(said, None) == "h:ana"
    assert pick("h:bob", "tenant") == "h:bob"  # one subject given: it is the subject


def _rollouts(split_by: str | None) -> Rollouts:
    rollouts = Rollouts(RolloutSettings(), None, MODELS, set(MODELS))
    spec = RolloutSpec.model_validate({"model": "small", "to": "v2", "kind": "ab",
                                       "percent": 50, "split_by": split_by})
    rollouts.restored({"small": ops.begin("small-v2-x", spec, "small", 0.0)})
    return rollouts


@pytest.mark.parametrize("split_by", ["tenant", "key"])
def test_a_rollout_split_by_tenant_or_key_keeps_each_in_one_arm(split_by: str) -> None:
    rollouts = _rollouts(split_by)
    arms: dict[str, set[str]] = {}
    for tenant in range(40):
        for user in range(5):  # each user with a key of their own, in one tenant
            said = subjects({"x-sluice-user": f"u{tenant}-{user}"}, f"key-{tenant}-"
                            f"{user if split_by == 'tenant' else 0}", f"tenant-{tenant}",
                            f"r{tenant}-{user}", "x-sluice-user", False)
            arms.setdefault(str(tenant), set()).add(rollouts.route("small", said))
    assert all(len(seen) == 1 for seen in arms.values())  # a whole tenant (key) per arm
    split = Counter(next(iter(seen)) for seen in arms.values())
    assert 8 < split["small@v2"] < 32  # and the tenants (keys) are split


def test_without_split_by_the_profiles_rule_splits_the_users_of_one_tenant() -> None:
    rollouts = _rollouts(None)
    seen = {rollouts.route("small", subjects({"x-sluice-user": f"u{i}"}, "key-1", "acme",
                                             f"r{i}", "x-sluice-user", False))
            for i in range(50)}
    assert seen == {"small", "small@v2"}
    stored = _rollouts("tenant")._rollouts["small"]
    assert ops.Rollout.from_json(stored.to_json()).spec.split_by == "tenant"
    with pytest.raises(ValueError, match="split_by"):
        RolloutSpec.model_validate({"model": "small", "to": "v2", "split_by": "header"})


# ---- through the handler: the tenant is the key's --------------------------------------

async def _none():
    return
    yield


class _Engines:
    def __contains__(self, model: object) -> bool:
        return model in ("small", "large")

    async def call(self, model: str, endpoint: str, request: Any) -> EngineStream:
        class Whole:
            def model_dump(self, mode: str = "python") -> dict[str, Any]:
                return {"id": "x", "object": "chat.completion", "created": 1, "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": "ok"}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

        return EngineStream(model, Whole(), _none(), "r-1")


def test_a_template_rollout_split_by_tenant_keeps_each_keys_tenant_in_one_arm() -> None:
    keys = [{"id": f"key-{t}-{k}", "tenant": f"tenant-{t}",
             "sha256": hashlib.sha256(f"secret-{t}-{k}".encode()).hexdigest()}
            for t in range(30) for k in range(3)]
    background = Background()
    metrics = Metrics()
    accountant = Accountant(AccountingConfig.model_validate({
        "auth": {"keys": keys}, "ledger": {"enabled": False}}), None, background.spawn,
        metrics)
    rollouts = Rollouts(RolloutSettings(), None, MODELS, set(MODELS))
    spec = RolloutSpec(model="prompt:support", to="v2", kind="ab", percent=50,
                       split_by="tenant")
    rollouts.restored({spec.model: ops.begin("p-v2", spec, "prompt:support", 0.0)})
    templates = {"support": PromptTemplate(system="v1"), "support@v2": PromptTemplate(
        system="v2")}
    cache = AnswerCache(ResponseCacheConfig(enabled=False), SemanticCacheConfig(), None,
                        lambda: None, background.spawn, NoOpTracer())  # type: ignore[arg-type]
    pipeline = Pipeline(StaticRouter(CONFIG.catalog, "small"), {}, _Engines(),  # type: ignore[arg-type]
                        cache, accountant.guard, NoOpTracer(), rollouts=rollouts)
    handler = RequestHandler(pipeline, accountant,
                             UsagePricer({m.name: m.pricing for m in CONFIG.catalog.models}),
                             metrics, RequestLimits(8, 4096), 1 << 20, rollouts=rollouts,
                             prompts=PromptStage(templates, rollouts))

    async def ask(t: int, k: int) -> str:
        async def body():
            yield json.dumps({"model": "small", "messages": [
                {"role": "user", "content": "hi"}]}).encode()

        headers = {"authorization": f"Bearer secret-{t}-{k}", "x-sluice-prompt": "support",
                   "x-sluice-user": f"user-{t}-{k}"}
        response = render(await handler.handle("chat", headers, body(), f"req-{t}-{k}"))
        return str(response.headers["x-sluice-prompt-variant"])

    async def run() -> dict[int, set[str]]:
        return {t: {await ask(t, k) for k in range(3)} for t in range(30)}

    by_tenant = asyncio.run(run())
    assert all(len(arms) == 1 for arms in by_tenant.values()), by_tenant
    assert {arm for arms in by_tenant.values() for arm in arms} == {"v1", "v2"}
