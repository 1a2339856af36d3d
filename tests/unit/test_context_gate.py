"""The context gate on the demo models' real tokenizer and chat template: counts equal
the template's tokens, and each policy changes the request as it says (the engine's own
prompt_tokens are compared in tests/integration/test_context_live.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sluice.accounting.budgets import BudgetGuard
from sluice.accounting.response_cost import UsagePricer
from sluice.accounting.tenancy import Principal
from sluice.errors import BudgetExceeded, ContextLengthExceeded, InvalidRequest
from sluice.pipeline.context_gate import ContextGate
from sluice.pipeline.handler import RequestHandler
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.token_counter import ModelTokens, TokenCounter
from sluice.router.context_fit import Candidate
from sluice.router.static import StaticRouter
from sluice.schema.accounting import Budget
from sluice.schema.catalog import Catalog, CatalogModel
from sluice.schema.context import ContextSettings
from sluice.schema.loading import load_platform_config
from sluice.schema.routing import RouteConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
LIMITS = RequestLimits(max_n=8, max_tokens=4096)
ROUTE = RouteConfig.model_validate({
    "name": "auto", "small": "small", "large": "large",
    "judge": {"kind": "logprob", "threshold": 0.5, "timeout_ms": 500,
              "provenance": {"method": "manual", "reason": "unit test"}}})
ANYONE = Principal("k", "acme")


def gate(demo_dir: Path, settings: dict[str, Any] | None = None,
         records: list[tuple[str, ...]] | None = None) -> ContextGate:
    pricer = UsagePricer({m.name: m.pricing for m in CONFIG.catalog.models})
    counter = TokenCounter({"small": str(demo_dir), "large": str(demo_dir)})
    router = StaticRouter(CONFIG.catalog, "small", [ROUTE])
    return ContextGate(
        ContextSettings.model_validate(settings or {}), router, counter,
        lambda m, p, c: pricer.price({"prompt_tokens": p, "completion_tokens": c}, m,
                                     hit=False).total_usd,
        lambda *r: (records if records is not None else []).append(r))


def request(body: dict[str, Any], headers: dict[str, str] | None = None,
            endpoint: str = "chat"):
    raw = json.dumps(body)
    return parsed(endpoint, json.loads(raw), LIMITS, "rid", headers or {},  # type: ignore[arg-type]
                  len(raw.encode()))


def long_chat(turns: int, words: int = 60) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "lorem " * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "ipsum " * words})
    messages.append({"role": "user", "content": "And the last question?"})
    return messages


def engine_count(tokenizer, messages: list[dict[str, Any]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_a_chat_is_counted_as_its_template_renders_it(demo_dir: Path, tokenizer) -> None:
    messages = long_chat(3) + [{"role": "user", "content": [
        {"type": "text", "text": "two"}, {"type": "text", "text": "parts"}]}]
    r = request({"model": "small", "messages": messages, "max_tokens": 8})
    gated = asyncio.run(gate(demo_dir).apply(r, ANYONE))
    assert gated is not None and not gated.fit.overflowed
    # the demo template iterates content parts, so vLLM hands them over as parts (the live
    # test compares with the engine's own count)
    assert r.prompt_tokens == gated.fit.prompt_tokens == engine_count(tokenizer, messages)
    c = request({"model": "small", "prompt": "Once upon a time", "max_tokens": 8},
                endpoint="completions")
    asyncio.run(gate(demo_dir).apply(c, ANYONE))
    assert c.prompt_tokens == len(tokenizer.encode("Once upon a time"))


def test_reject_is_the_400_with_the_limit_and_the_count(demo_dir: Path) -> None:
    records: list[tuple[str, ...]] = []
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64})
    with pytest.raises(ContextLengthExceeded) as err:
        asyncio.run(gate(demo_dir, records=records).apply(r, ANYONE))
    assert "maximum context length is 2048 tokens" in err.value.message
    assert err.value.param == "messages"  # the prompt alone does not fit
    assert "at least" not in err.value.message  # counted: its floor fits
    fits = request({"model": "small", "messages": long_chat(3), "max_tokens": 2000})
    with pytest.raises(ContextLengthExceeded) as err:
        asyncio.run(gate(demo_dir).apply(fits, ANYONE))
    assert err.value.param == "max_tokens"  # the prompt fits; the answer's room does not
    assert records == [("small", "reject", "rejected", "acme")]


def test_route_moves_the_request_to_the_model_that_fits(demo_dir: Path) -> None:
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                {"x-sluice-context": "route"})
    gated = asyncio.run(gate(demo_dir).apply(r, ANYONE))
    assert gated is not None and gated.note == "routed" and r.llm.model == "large"
    only_small = Principal("k", "acme", models=("small",))
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                {"x-sluice-context": "route"})
    with pytest.raises(ContextLengthExceeded):  # the key may not use large
        asyncio.run(gate(demo_dir).apply(r, only_small))


def test_trim_keeps_the_system_message_and_the_last_turn(demo_dir: Path, tokenizer) -> None:
    messages = long_chat(12)
    r = request({"model": "small", "messages": messages, "max_tokens": 64},
                {"x-sluice-context": "trim"})
    gated = asyncio.run(gate(demo_dir).apply(r, ANYONE))
    assert gated is not None and gated.fit.outcome == "trimmed"
    sent = r.llm.messages
    assert sent[0]["content"] == "You are terse." and sent[-1]["content"] == messages[-1][
        "content"]
    assert engine_count(tokenizer, list(sent)) == r.prompt_tokens <= 2048 - 64
    assert gated.note == (f"trimmed {len(messages) - len(sent)} messages, "
                          f"{gated.fit.dropped_tokens:,} tokens")
    assert r.body["messages"] == messages  # the body as sent stays


def test_a_cascade_too_long_for_its_small_model_goes_to_its_large_one(demo_dir: Path) -> None:
    r = request({"model": "auto", "messages": long_chat(12), "max_tokens": 64})
    gated = asyncio.run(gate(demo_dir).apply(r, ANYONE))
    assert gated is not None and r.llm.model == "large" and gated.fit.outcome == "routed"
    short = request({"model": "auto", "messages": long_chat(1), "max_tokens": 64})
    asyncio.run(gate(demo_dir).apply(short, ANYONE))
    assert short.llm.model == "auto"  # fits its first stage: the cascade runs


def test_lowered_max_tokens_is_said_and_sent(demo_dir: Path) -> None:
    settings = {"models": {"small": {"policy": "reject", "lower_max_tokens": True}}}
    r = request({"model": "small", "messages": long_chat(3), "max_tokens": 2000})
    gated = asyncio.run(gate(demo_dir, settings).apply(r, ANYONE))
    assert gated is not None and gated.fit.outcome == "lowered"
    assert r.max_output_tokens == 2048 - (r.prompt_tokens or 0)
    assert gated.note == f"max_tokens lowered 2,000->{r.max_output_tokens:,}"


def test_a_bad_policy_header_is_a_400_and_the_profile_can_forbid_choosing(
        demo_dir: Path) -> None:
    r = request({"model": "small", "messages": long_chat(1)}, {"x-sluice-context": "shrink"})
    with pytest.raises(InvalidRequest, match="x-sluice-context"):
        asyncio.run(gate(demo_dir).apply(r, ANYONE))
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                {"x-sluice-context": "route"})
    with pytest.raises(ContextLengthExceeded):
        asyncio.run(gate(demo_dir, {"client_choice": False}).apply(r, ANYONE))


def test_a_model_without_a_tokenizer_is_left_to_its_engine(tmp_path: Path) -> None:
    g = gate(tmp_path / "missing")
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64})
    assert asyncio.run(g.apply(r, ANYONE)) is None and r.prompt_tokens is None


def test_content_reaches_the_template_in_the_form_vllm_detects() -> None:
    from sluice.pipeline.token_counter import _as_format, content_format

    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    iterating = "{% for m in messages %}{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endfor %}"
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert (content_format(iterating), content_format(plain)) == ("openai", "string")
    assert _as_format(parts, "string") == "a\nb" and _as_format(parts, "openai") == parts
    assert _as_format("s", "openai") == [{"type": "text", "text": "s"}]
    assert _as_format(None, "openai") == [] and _as_format("s", "string") == "s"


def _with_hosted(demo_dir: Path, hosted_usd_per_1m: float,
                 allowed: bool = True) -> ContextGate:
    """The demo catalog plus a hosted model (a provider's: no tokenizer here) with a long
    context, priced per token."""
    hosted = CatalogModel.model_validate({
        "name": "hosted", "tier": "large", "context_length": 200_000,
        "provider": {"base_url": "https://provider.test/v1", "model": "their-model"},
        "pricing": {"mode": "tokens", "tokens": {"input_per_1m": hosted_usd_per_1m,
                                                  "output_per_1m": hosted_usd_per_1m}}})
    catalog = Catalog(models=(*CONFIG.catalog.models, hosted))
    pricer = UsagePricer({m.name: m.pricing for m in catalog.models})
    counter = TokenCounter({"small": str(demo_dir), "large": str(demo_dir)})
    return ContextGate(
        ContextSettings.model_validate({"route_to_hosted": allowed}),
        StaticRouter(catalog, "small", [ROUTE]), counter,
        lambda m, p, c: pricer.price({"prompt_tokens": p, "completion_tokens": c}, m,
                                     hit=False).total_usd, lambda *r: None)


def test_route_may_go_to_a_hosted_model_judged_on_the_prompts_byte_bound(
        demo_dir: Path) -> None:
    # too long for small (2,048) and large (8,192); a hosted 200k model fits it
    messages = long_chat(60, words=80)
    r = request({"model": "small", "messages": messages, "max_tokens": 64},
                {"x-sluice-context": "route"})
    gated = asyncio.run(_with_hosted(demo_dir, 1.0).apply(r, ANYONE))
    assert gated is not None and gated.note == "routed" and r.llm.model == "hosted"
    # no tokenizer of its own: the bound (bytes), which no tokenizer's count exceeds
    assert r.prompt_tokens == r.prompt_tokens_bound() > 8192
    # unless the profile allows it, a prompt for a model of one's own never leaves
    kept = request({"model": "small", "messages": messages, "max_tokens": 64},
                   {"x-sluice-context": "route"})
    with pytest.raises(ContextLengthExceeded):
        asyncio.run(_with_hosted(demo_dir, 1.0, allowed=False).apply(kept, ANYONE))


def test_route_takes_the_cheapest_that_fits_local_before_a_pricier_hosted_one(
        demo_dir: Path) -> None:
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                {"x-sluice-context": "route"})  # fits large's 8,192
    asyncio.run(_with_hosted(demo_dir, 100.0).apply(r, ANYONE))
    assert r.llm.model == "large"
    cheap = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                    {"x-sluice-context": "route"})
    asyncio.run(_with_hosted(demo_dir, 0.001).apply(cheap, ANYONE))
    assert cheap.llm.model == "hosted"  # cheaper than large: the route's rule, local or not
    no_hosted = Principal("k", "acme", models=("small", "large"))
    kept = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                   {"x-sluice-context": "route"})
    asyncio.run(_with_hosted(demo_dir, 0.001).apply(kept, no_hosted))
    assert kept.llm.model == "large"  # a key limited to local models stays local


def _catalog_gate(demo_dir: Path, *extra: dict[str, Any],
                  settings: dict[str, Any] | None = None) -> ContextGate:
    """The demo catalog plus these models (a local one counted with the demo tokenizer)."""
    added = [CatalogModel.model_validate(m) for m in extra]
    catalog = Catalog(models=(*CONFIG.catalog.models, *added))
    pricer = UsagePricer({m.name: m.pricing for m in catalog.models})
    counter = TokenCounter({m.name: str(demo_dir) for m in catalog.models if m.local})
    return ContextGate(
        ContextSettings.model_validate(settings or {}), StaticRouter(catalog, "small", [ROUTE]),
        counter, lambda m, p, c: pricer.price({"prompt_tokens": p, "completion_tokens": c}, m,
                                              hit=False).total_usd, lambda *r: None)


HUGE = "lorem ipsum dolor " * 60_000  # ~1 MiB: its floor alone is past every demo context


@pytest.mark.parametrize("policy", ["reject", "route", "trim"])
def test_a_huge_body_is_refused_on_its_floor_without_tokenizing(
        demo_dir: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def tokenized(self: ModelTokens, prompt: Any) -> int:
        raise AssertionError("the tokenizer ran")

    monkeypatch.setattr(ModelTokens, "count", tokenized)
    records: list[tuple[str, ...]] = []
    messages = [*long_chat(2), {"role": "user", "content": HUGE}]  # trim keeps the last
    r = request({"model": "small", "messages": messages, "max_tokens": 64},
                {"x-sluice-context": policy})
    with pytest.raises(ContextLengthExceeded) as err:
        asyncio.run(gate(demo_dir, records=records).apply(r, ANYONE))
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    assert "maximum context length is 2048 tokens" in err.value.message
    assert "you requested at least" in err.value.message
    assert "lower bound from the prompt's size, not tokenized" in err.value.message
    assert records == [("small", policy, "rejected", "acme")]
    # a completion too; and a hosted model (judged on the prompt's byte bound) too small
    c = request({"model": "small", "prompt": HUGE}, {"x-sluice-context": policy},
                endpoint="completions")
    with pytest.raises(ContextLengthExceeded, match="requested at least"):  # (max_tokens 16)
        asyncio.run(_with_hosted(demo_dir, 1.0).apply(c, ANYONE))


def test_route_never_offers_a_rollout_variant(demo_dir: Path) -> None:
    """`large@v2` gets its traffic from its rollout's split; a route to it would bypass it."""
    variant = {"name": "large@v2", "source": "models/demo/large", "tier": "large",
               "context_length": 8192, "pricing": {"mode": "tokens", "tokens": {
                   "input_per_1m": 0.01, "output_per_1m": 0.01}}}  # cheaper than large
    g = _catalog_gate(demo_dir, variant)
    r = request({"model": "small", "messages": long_chat(12), "max_tokens": 64},
                {"x-sluice-context": "route"})
    gated = asyncio.run(g.apply(r, ANYONE))
    assert gated is not None and gated.note == "routed" and r.llm.model == "large"


def test_route_ranks_as_the_budget_holds_so_the_model_picked_is_admitted_first(
        demo_dir: Path) -> None:
    """Without max_tokens the handler holds the rest of the routed model's context (its
    `_worst_usd`); ranked on a few completion tokens instead, a long-context model with
    cheap input and dear output looks cheapest, and its hold commits the key's budget."""
    long = {"name": "long", "tier": "large", "context_length": 200_000,
            "provider": {"base_url": "https://provider.test/v1", "model": "theirs"},
            "pricing": {"mode": "tokens", "tokens": {"input_per_1m": 0.01,
                                                     "output_per_1m": 20.0}}}
    g = _catalog_gate(demo_dir, long, settings={"route_to_hosted": True})
    body = {"model": "small", "messages": long_chat(12)}  # fits large's 8,192; no max_tokens
    r = request(body, {"x-sluice-context": "route"})
    bound, guess = r.prompt_tokens_bound(), r.prompt_tokens_guess()
    price = g._price
    assert price("long", guess, 16) < price("large", guess, 16)  # the old ranking's pick
    asyncio.run(g.apply(r, ANYONE))
    assert r.llm.model == "large"
    # the gate's ranking is what the handler holds for the request, on the model it runs
    # (only its `_worst_usd` runs: the router answers `models_at_worst` as the pipeline does)
    pricer = UsagePricer({m.name: m.pricing for m in g._router.catalog()})
    handler = RequestHandler(g._router, None, pricer, None, LIMITS, 1 << 20)  # type: ignore[arg-type]
    worst = handler._worst_usd(r)
    large, hosted = Candidate("large", 8192), Candidate("long", 200_000)
    assert worst == pytest.approx(g.held(large, bound, None, 1))
    assert g.held(hosted, bound, None, 1) > 100 * worst  # what routing to it would hold

    async def holds(usd: list[float]) -> list[bool]:
        async def no_spend(keys: Any) -> list[None]:
            return [None] * len(keys)

        guard = BudgetGuard([Budget(scope="key", id="k", daily_usd=1.5 * worst)], no_spend)
        admitted = []
        for each in usd:
            try:
                admitted.append(await guard.reserve(ANYONE, each, 0.0) is not None)
            except BudgetExceeded as exc:
                assert exc.status == 429
                admitted.append(False)
        return admitted

    # two requests in flight hold the budget; the third's 429 is the budget's, as it would
    # be on any other model that fits (each holds more)
    assert asyncio.run(holds([worst, worst, worst])) == [True, True, False]
    # routed to the long model, the first request alone would have committed it
    assert asyncio.run(holds([g.held(hosted, bound, None, 1), worst])) == [True, False]
