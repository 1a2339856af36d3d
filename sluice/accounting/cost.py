"""What one request cost, from its token usage and the model's price in the catalog.

Two ways to price a model (`pricing:` in platform/catalog.yaml):
- `tokens`: dollars per million input, cached-input and output tokens, as API providers bill
  (and cache-write tokens, which Anthropic bills above the input price: a provider's usage
  names them in `prompt_tokens_details.cache_write_tokens`);
- `gpu_time`: a replica's hourly rate spread over the tokens it processes. The replica time
  attributed to a request is its processed tokens (uncached input + output) over the
  replica's throughput at its sustainable load (`tokens_per_s`, from `make plan`), so
  cost = hourly_usd / 3600 × (uncached input + output) / tokens_per_s. Idle replica time is
  not attributed to anyone here; it shows as the gap between this and the bill.
Cached input tokens cost nothing under `gpu_time`: no prefill ran for them.
A response-cache hit ran no engine at all and costs zero under both.

Pure: no I/O. Amounts are floats in US dollars, rounded to 1e-9 for reporting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluice.observability.outcome import Tokens
from sluice.schema.accounting import Pricing


def cost_usd(usage: Mapping[str, Any] | None, pricing: Pricing | None) -> float:
    """The engine cost of one answer (0 without usage or without a price)."""
    if not usage or pricing is None:
        return 0.0
    tokens = Tokens.of(usage)
    if pricing.mode == "tokens":
        p = pricing.tokens
        assert p is not None
        cached_price = p.input_per_1m if p.cached_input_per_1m is None else p.cached_input_per_1m
        write_price = p.input_per_1m if p.cache_write_per_1m is None else p.cache_write_per_1m
        total = ((tokens.uncached_prompt - tokens.cache_write) * p.input_per_1m
                 + tokens.cache_write * write_price + tokens.cached * cached_price
                 + tokens.completion * p.output_per_1m) / 1e6
    else:
        g = pricing.gpu_time
        assert g is not None
        total = (g.hourly_usd / 3600 * (tokens.uncached_prompt + tokens.completion)
                 / g.tokens_per_s)
    return round(total, 9)
