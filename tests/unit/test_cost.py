"""The cost model: token prices and GPU time, cached tokens, cache hits, config validation."""

from __future__ import annotations

import pytest

from sluice.accounting.cost import cost_usd
from sluice.schema.accounting import Pricing

USAGE = {"prompt_tokens": 1000, "completion_tokens": 200,
         "prompt_tokens_details": {"cached_tokens": 600}}
TOKENS = Pricing.model_validate({"mode": "tokens", "tokens": {
    "input_per_1m": 3.0, "cached_input_per_1m": 0.3, "output_per_1m": 15.0}})
GPU = Pricing.model_validate({"mode": "gpu_time", "gpu_time": {
    "hourly_usd": 3.6, "tokens_per_s": 1000}})


def test_token_prices_bill_uncached_cached_and_output_tokens() -> None:
    # 400 x 3 + 600 x 0.3 + 200 x 15 = 1200 + 180 + 3000 = 4380 per 1M
    assert cost_usd(USAGE, TOKENS) == pytest.approx(0.00438)
    unpriced_cache = Pricing.model_validate(
        {"mode": "tokens", "tokens": {"input_per_1m": 3.0, "output_per_1m": 15.0}})
    assert cost_usd(USAGE, unpriced_cache) == pytest.approx((1000 * 3 + 200 * 15) / 1e6)


def test_cache_writes_are_billed_at_their_own_price_or_the_input_price() -> None:
    # Anthropic's usage as anthropic_wire writes it: 100 input, 600 read, 300 written
    usage = {"prompt_tokens": 1000, "completion_tokens": 200,
             "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300}}
    writes = Pricing.model_validate({"mode": "tokens", "tokens": {
        "input_per_1m": 3.0, "cached_input_per_1m": 0.3, "cache_write_per_1m": 3.75,
        "output_per_1m": 15.0}})
    # 100 x 3 + 300 x 3.75 + 600 x 0.3 + 200 x 15 = 300 + 1125 + 180 + 3000 per 1M
    assert cost_usd(usage, writes) == pytest.approx(0.004605)
    assert cost_usd(usage, TOKENS) == pytest.approx(0.00438)  # no write price: input price
    assert cost_usd(usage, GPU) == pytest.approx(0.0006)  # a write is prefill like any other
    too_many = {**usage, "prompt_tokens_details": {"cached_tokens": 600,
                                                   "cache_write_tokens": 900}}
    assert cost_usd(too_many, writes) == pytest.approx((400 * 3.75 + 180 + 3000) / 1e6)


def test_gpu_time_attributes_replica_seconds_by_processed_tokens() -> None:
    # (400 uncached + 200 output) / 1000 tok/s = 0.6 replica-s at $0.001/s
    assert cost_usd(USAGE, GPU) == pytest.approx(0.0006)
    all_cached = {**USAGE, "prompt_tokens_details": {"cached_tokens": 1000}}
    assert cost_usd(all_cached, GPU) == pytest.approx(0.0002)  # output only


def test_no_usage_or_no_price_costs_nothing() -> None:
    assert cost_usd(None, TOKENS) == 0.0
    assert cost_usd(USAGE, None) == 0.0


def test_cached_tokens_never_exceed_the_prompt() -> None:
    odd = {"prompt_tokens": 10, "completion_tokens": 0,
           "prompt_tokens_details": {"cached_tokens": 50}}
    assert cost_usd(odd, TOKENS) == pytest.approx(10 * 0.3 / 1e6)


@pytest.mark.parametrize("bad", [
    {"mode": "tokens"},
    {"mode": "gpu_time", "tokens": {"input_per_1m": 1, "output_per_1m": 1}},
    {"mode": "tokens", "tokens": {"input_per_1m": -1, "output_per_1m": 1}},
    {"mode": "gpu_time", "gpu_time": {"hourly_usd": 2, "tokens_per_s": 0}},
])
def test_pricing_rejects_incomplete_or_negative_prices(bad) -> None:
    with pytest.raises(ValueError):
        Pricing.model_validate(bad)


def test_usage_tokens_are_read_in_one_place() -> None:
    from sluice.observability.outcome import Tokens

    usage = {"prompt_tokens": 10, "completion_tokens": 4,
             "prompt_tokens_details": {"cached_tokens": 12}}  # cached never beyond prompt
    assert Tokens.of(usage) == Tokens(prompt=10, cached=10, completion=4)
    assert Tokens.of(usage).uncached_prompt == 0
    assert Tokens.of(None) == Tokens() and Tokens.of({"prompt_tokens_details": None}) == Tokens()
