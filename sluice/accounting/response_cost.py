"""The `cost` block of an answer's usage: the answer's engine cost plus the stages before it.

`x-sluice-cost-usd` (when the headers are not yet sent) and `usage.cost` carry the total;
`usage.cost.stages` itemizes it when more than the answering model ran (a cascade's rejected
draft, its LLM judge). A response-cache hit ran no engine: cost 0, source `response_cache`.
Settlement (sluice.pipeline.settlement) finds the usage; this module prices it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sluice.accounting.cost import cost_usd
from sluice.accounting.price_catalog import CatalogPricing
from sluice.accounting.stage_spend import StageSpend
from sluice.observability.outcome import Priced
from sluice.schema.accounting import Pricing


def _now() -> datetime:
    return datetime.now(UTC)


class UsagePricer:
    """Prices usage with the catalog's pricing of each model. A `mode: catalog` model is
    looked up once, here (`sluice.accounting.price_catalog`, refused at startup if it
    cannot be priced), and priced at the price in force when its answer is priced
    (`clock`): a catalog price may change on a date or by the hour of the day."""

    def __init__(self, pricing: Mapping[str, Pricing | None],
                 clock: Callable[[], datetime] = _now) -> None:
        self._clock = clock
        self._fixed = {name: p for name, p in pricing.items()
                       if p is None or p.mode != "catalog"}
        self._catalog = {name: CatalogPricing(p.catalog, clock())
                         for name, p in pricing.items()
                         if p is not None and p.mode == "catalog" and p.catalog is not None}

    def pricing(self, model: str) -> Pricing | None:
        """The model's pricing now (None: not priced)."""
        catalog = self._catalog.get(model)
        return catalog.at(self._clock()) if catalog is not None else self._fixed.get(model)

    def stage_costs(self, stages: Sequence[StageSpend]) -> list[dict[str, Any]]:
        return [{"stage": s.stage, "model": s.model,
                 "usd": cost_usd(s.usage, self.pricing(s.model))} for s in stages]

    def price(self, usage: dict[str, Any] | None, model: str, *, hit: bool,
              stages: Sequence[StageSpend] = ()) -> Priced:
        """`usage` None: the answer's tokens are unknown (it failed); only stages count."""
        answer = 0.0 if hit or usage is None else cost_usd(usage, self.pricing(model))
        items = self.stage_costs(stages)
        by_model: dict[str, float] = {}
        for item in [*items, {"model": model, "usd": answer}]:
            by_model[item["model"]] = by_model.get(item["model"], 0.0) + item["usd"]
        total = round(answer + sum(i["usd"] for i in items), 9)
        block: dict[str, Any] = {"total_usd": total, "currency": "USD",
                                 "source": "response_cache" if hit else "engine"}
        if items:
            block["stages"] = [*items, {"stage": "answer", "model": model, "usd": answer}]
        return Priced({**(usage or {}), "cost": block}, total, by_model)
