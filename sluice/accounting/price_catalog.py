"""Token prices (and context windows) of hosted models from a maintained catalog: pydantic's
`genai-prices` package (https://github.com/pydantic/genai-prices), whose data covers the
major providers and is kept current by its maintainers. The bundled snapshot of the version
`pyproject.toml` pins is used (no download at run time: a price changes only when the pin
does, reviewed like any other change); `genai-prices` can also fetch newer data from GitHub,
which Sluice does not do. `sluice catalog prices` shows what every `mode: catalog` model
resolves to, and the package's context window against the catalog's `context_length`.

Only flat token prices are taken (input, cached input read, output per 1M tokens); a model
the package prices in tiers (by prompt length) is refused with its name, so it is priced
with `mode: tokens` by hand instead.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sluice.schema.accounting import CatalogPrices, Pricing, TokenPrices


@dataclass(frozen=True)
class Looked:
    prices: TokenPrices
    context_window: int | None
    package: str  # "genai-prices 0.2.3"
    model: str  # the catalog's own model id it matched


def _flat(value: Any, what: str, ref: CatalogPrices) -> float | None:
    if value is None:
        return None
    if not isinstance(value, Decimal | int | float):
        raise ValueError(f"{ref.package} prices {ref.provider}/{ref.model}'s {what} in tiers; "
                         "price it with `mode: tokens`")
    return float(value)


def lookup(ref: CatalogPrices) -> Looked:
    from genai_prices.data_snapshot import get_snapshot  # only where a model uses it

    try:
        _, info = get_snapshot().find_provider_model(ref.model, None, ref.provider, None)
    except LookupError as exc:
        raise ValueError(f"{ref.package} has no model '{ref.model}' for provider "
                         f"'{ref.provider}': {exc}") from None
    prices = info.prices
    if not hasattr(prices, "input_mtok"):  # a list of prices by date: the current one
        prices = prices[-1].prices if isinstance(prices, list) else prices
    input_ = _flat(getattr(prices, "input_mtok", None), "input", ref)
    output = _flat(getattr(prices, "output_mtok", None), "output", ref)
    if input_ is None or output is None:
        raise ValueError(f"{ref.package} has no token prices for {ref.provider}/{ref.model}")
    cached = _flat(getattr(prices, "cache_read_mtok", None), "cached input", ref)
    version = importlib.metadata.version("genai-prices")
    return Looked(TokenPrices(input_per_1m=input_, cached_input_per_1m=cached,
                              output_per_1m=output),
                  info.context_window, f"genai-prices {version}", info.id)


def resolved(pricing: Pricing | None) -> Pricing | None:
    """`mode: catalog` as the `mode: tokens` it stands for; any other pricing as it is."""
    if pricing is None or pricing.mode != "catalog":
        return pricing
    assert pricing.catalog is not None
    return Pricing(mode="tokens", tokens=lookup(pricing.catalog).prices)
