"""Token prices (and context windows) of hosted models from a maintained catalog: pydantic's
`genai-prices` package (https://github.com/pydantic/genai-prices), whose data covers the
major providers and is kept current by its maintainers. The bundled snapshot of the version
`pyproject.toml` pins is used (no download at run time: a price changes only when the pin
does, reviewed like any other change); `genai-prices` can also fetch newer data from GitHub,
which Sluice does not do. `sluice catalog prices` shows what every `mode: catalog` model
resolves to, and the package's context window against the catalog's `context_length`.

A model's price is the one in force when the answer is priced, as the package picks it
(`ModelInfo.get_prices`): a price with a start date applies from that date, an off-peak
price (DeepSeek's) within its hours of the day. Only flat token prices are taken (input,
cached input read, cache write, output per 1M tokens); a model the package prices in tiers
(by prompt length), now or in a price still to come, is refused with its name, so it is
priced with `mode: tokens` by hand instead.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sluice.schema.accounting import CatalogPrices, Pricing, TokenPrices


@dataclass(frozen=True)
class Looked:
    prices: TokenPrices  # the prices in force at the time looked up
    context_window: int | None
    package: str  # "genai-prices 0.2.3"
    model: str  # the catalog's own model id it matched


def _flat(value: Any, what: str, ref: CatalogPrices) -> float | None:
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(value)
    raise ValueError(f"{ref.package} prices {ref.provider}/{ref.model}'s {what} in tiers; "
                     "price it with `mode: tokens`")


def _token_prices(prices: Any, ref: CatalogPrices) -> TokenPrices:
    """One of the package's `ModelPrice`s as Sluice's token prices."""
    input_ = _flat(getattr(prices, "input_mtok", None), "input", ref)
    output = _flat(getattr(prices, "output_mtok", None), "output", ref)
    if input_ is None or output is None:
        raise ValueError(f"{ref.package} has no token prices for {ref.provider}/{ref.model}")
    return TokenPrices(
        input_per_1m=input_, output_per_1m=output,
        cached_input_per_1m=_flat(getattr(prices, "cache_read_mtok", None), "cached input",
                                  ref),
        cache_write_per_1m=_flat(getattr(prices, "cache_write_mtok", None), "cache write",
                                 ref))


def _model(ref: CatalogPrices) -> Any:
    from genai_prices.data_snapshot import get_snapshot  # only where a model uses it

    try:
        _, info = get_snapshot().find_provider_model(ref.model, None, ref.provider, None)
    except LookupError as exc:
        raise ValueError(f"{ref.package} has no model '{ref.model}' for provider "
                         f"'{ref.provider}': {exc}") from None
    return info


def _ahead(info: Any, at: datetime) -> list[Any]:
    """The prices that may apply from `at` on: the package uses the last of its conditional
    prices whose condition holds, so none before the last one that always holds from now on
    (no condition, or a start date passed) applies again."""
    from genai_prices.types import StartDateConstraint

    if not isinstance(info.prices, list):
        return [info.prices]
    start = 0
    for i, conditional in enumerate(info.prices):
        constraint = conditional.constraint
        if constraint is None or (isinstance(constraint, StartDateConstraint)
                                  and constraint.active(at)):
            start = i
    return [c.prices for c in info.prices[start:]]


class CatalogPricing:
    """One `mode: catalog` model's prices, as the package picks them for a time. Every price
    that may apply from the time it is built on is converted (and refused if tiered) then,
    once, so pricing an answer later only picks one."""

    def __init__(self, ref: CatalogPrices, at: datetime | None = None) -> None:
        self.ref, self._info = ref, _model(ref)
        self._converted: dict[int, Pricing] = {}  # by id() of the package's ModelPrice
        self._kept: list[Any] = []  # those prices, so their ids stay theirs
        for prices in _ahead(self._info, at or datetime.now(UTC)):
            self._pricing(prices)

    def _pricing(self, prices: Any) -> Pricing:
        found = self._converted.get(id(prices))
        if found is None:
            found = Pricing(mode="tokens", tokens=_token_prices(prices, self.ref))
            self._converted[id(prices)] = found
            self._kept.append(prices)
        return found

    def at(self, when: datetime) -> Pricing:
        """The prices in force at `when` (the package's `ModelInfo.get_prices`)."""
        return self._pricing(self._info.get_prices(when))

    def looked(self, when: datetime) -> Looked:
        tokens = self.at(when).tokens
        assert tokens is not None
        version = importlib.metadata.version("genai-prices")
        return Looked(tokens, self._info.context_window, f"genai-prices {version}",
                      self._info.id)


def lookup(ref: CatalogPrices, at: datetime | None = None) -> Looked:
    """A catalog model's prices in force at `at` (now if None) and its context window."""
    at = at or datetime.now(UTC)
    return CatalogPricing(ref, at).looked(at)


def resolved(pricing: Pricing | None, at: datetime | None = None) -> Pricing | None:
    """`mode: catalog` as the `mode: tokens` in force at `at` (now if None); any other
    pricing as it is."""
    if pricing is None or pricing.mode != "catalog":
        return pricing
    assert pricing.catalog is not None
    at = at or datetime.now(UTC)
    return CatalogPricing(pricing.catalog, at).at(at)
