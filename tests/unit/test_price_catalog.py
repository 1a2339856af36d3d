"""Hosted models priced from a maintained catalog (#21): `pricing: {mode: catalog}` is looked
up in genai-prices' bundled snapshot (the pinned version), used as token prices by the
pricer, and refused by name where the catalog cannot price it flatly."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from sluice.accounting.price_catalog import CatalogPricing, lookup, resolved
from sluice.accounting.response_cost import UsagePricer
from sluice.schema.accounting import CatalogPrices, Pricing

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_package_is_the_one_installed() -> None:
    line = next(x for x in (ROOT / "pyproject.toml").read_text().splitlines()
                if "genai-prices==" in x)
    assert f'"genai-prices=={importlib.metadata.version("genai-prices")}"' in line, line


def test_a_catalog_priced_model_gets_the_packages_prices_and_context_window() -> None:
    looked = lookup(CatalogPrices(provider="openai", model="gpt-4o-mini"))
    # genai-prices 0.2.3's numbers for gpt-4o-mini (OpenAI's list price)
    assert (looked.prices.input_per_1m, looked.prices.output_per_1m,
            looked.prices.cached_input_per_1m) == (0.15, 0.6, 0.075)
    assert looked.context_window == 128000 and looked.package.startswith("genai-prices ")
    claude = lookup(CatalogPrices(provider="anthropic", model="claude-3-5-haiku-latest"))
    assert (claude.prices.input_per_1m, claude.prices.output_per_1m) == (0.8, 4.0)
    # Anthropic bills a cache write above the input price, a cache read below it
    assert (claude.prices.cache_write_per_1m, claude.prices.cached_input_per_1m) == (1.0, 0.08)
    assert looked.prices.cache_write_per_1m is None  # OpenAI bills none: the input price


# genai-prices 0.2.3's conditional prices: gemini-3.6-flash doubles on 2027-01-01 (its last
# price, not yet in force in 2026), deepseek-chat is half price off-peak (16:30-00:30 UTC)
GEMINI = CatalogPrices(provider="google", model="gemini-3.6-flash")
DEEPSEEK = CatalogPrices(provider="deepseek", model="deepseek-chat")
DECEMBER_NOON = datetime(2026, 12, 6, 12, tzinfo=UTC)


def test_the_price_in_force_is_the_packages_choice_for_the_time_not_its_last() -> None:
    assert lookup(GEMINI, DECEMBER_NOON).prices.input_per_1m == 0.75
    assert lookup(GEMINI, datetime(2027, 1, 2, tzinfo=UTC)).prices.input_per_1m == 1.5
    assert lookup(DEEPSEEK, DECEMBER_NOON).prices.input_per_1m == 0.27
    assert lookup(DEEPSEEK, datetime(2026, 12, 6, 20, tzinfo=UTC)).prices.input_per_1m == 0.135
    assert resolved(Pricing(mode="catalog", catalog=GEMINI),
                    DECEMBER_NOON).tokens.output_per_1m == 3.75


def test_the_pricer_prices_each_answer_at_the_price_in_force_when_it_is_priced() -> None:
    now = [DECEMBER_NOON]
    pricer = UsagePricer({"deep": Pricing(mode="catalog", catalog=DEEPSEEK)},
                         clock=lambda: now[0])
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 0}
    assert pricer.price(usage, "deep", hit=False).total_usd == pytest.approx(0.27)
    now[0] = datetime(2026, 12, 6, 20, tzinfo=UTC)  # off-peak
    assert pricer.price(usage, "deep", hit=False).total_usd == pytest.approx(0.135)


def test_only_prices_that_may_still_apply_must_be_flat() -> None:
    opus = CatalogPrices(provider="anthropic", model="claude-opus-4-6")
    # priced in tiers until 2026-03-13, flat since: the tiers no longer matter
    assert CatalogPricing(opus, DECEMBER_NOON).at(DECEMBER_NOON).tokens.input_per_1m == 5.0
    with pytest.raises(ValueError, match="in tiers"):  # built before: a tiered price ahead
        CatalogPricing(opus, datetime(2026, 3, 1, tzinfo=UTC))


def test_the_pricer_prices_a_catalog_model_as_its_token_prices() -> None:
    pricing = Pricing(mode="catalog", catalog=CatalogPrices(provider="openai",
                                                            model="gpt-4o-mini"))
    assert resolved(pricing).mode == "tokens"
    priced = UsagePricer({"hosted": pricing}).price(
        {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000,
         "prompt_tokens_details": {"cached_tokens": 0}}, "hosted", hit=False)
    assert priced.total_usd == pytest.approx(0.75)


def test_an_unknown_model_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no model 'no-such-model'"):
        lookup(CatalogPrices(provider="openai", model="no-such-model"))


def test_a_mode_without_its_block_is_refused() -> None:
    with pytest.raises(ValueError, match="needs its `catalog:` block"):
        Pricing(mode="catalog")


def test_the_cli_shows_where_each_price_comes_from(tmp_path: Path) -> None:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    catalog = yaml.safe_load((ROOT / "platform/catalog.yaml").read_text())
    for m in catalog["models"]:
        m["source"] = str(ROOT / m["source"])
    catalog["models"].append({
        "name": "hosted", "tier": "large", "context_length": 100000,
        "provider": {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini"},
        "pricing": {"mode": "catalog", "catalog": {"provider": "openai",
                                                   "model": "gpt-4o-mini"}}})
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    profile["catalog"] = str(tmp_path / "catalog.yaml")
    profile.pop("routing", None)
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    done = subprocess.run([sys.executable, "-m", "sluice.cli", "catalog", "prices",
                           "--profile", str(tmp_path / "profile.yaml")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("hosted:"))
    assert "$0.15 input, $0.6 output, $0.075 cached input per 1M tokens" in line
    assert "from genai-prices 0.2.3 (openai/gpt-4o-mini)" in line
    assert "its context window 128,000 (the catalog says 100,000)" in line


def test_an_anthropic_answers_cache_writes_cost_the_catalogs_cache_write_price() -> None:
    from sluice.pipeline.anthropic_wire import chat_usage

    usage = chat_usage({"input_tokens": 1_000_000, "cache_read_input_tokens": 1_000_000,
                        "cache_creation_input_tokens": 1_000_000, "output_tokens": 1_000_000})
    pricing = Pricing(mode="catalog", catalog=CatalogPrices(
        provider="anthropic", model="claude-3-5-haiku-latest"))
    priced = UsagePricer({"claude": pricing}).price(usage, "claude", hit=False)
    assert priced.total_usd == pytest.approx(0.8 + 0.08 + 1.0 + 4.0)  # not 0.8 for the write
