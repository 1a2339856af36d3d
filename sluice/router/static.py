"""Model resolution before the cascade exists: explicit models go where asked, `auto` to a
fixed tier, and the route header says so rather than pretending to cascade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.config import Catalog
from sluice.errors import ModelNotFound

AUTO = "auto"
DEMO_NOTE = "random-weight demo model: its output is noise"


@dataclass(frozen=True)
class RouteDecision:
    model: str  # the catalog model that will answer
    route: str  # what x-sluice-route reports


class StaticRouter:
    def __init__(self, catalog: Catalog, auto_tier: str) -> None:
        self._catalog = catalog
        self._models = {m.name: m for m in catalog.models}
        self._auto_target = catalog.by_tier(auto_tier).name

    @property
    def model_ids(self) -> list[str]:
        return [*self._models, AUTO]

    def decide(self, requested: str) -> RouteDecision:
        if requested in self._models:
            return RouteDecision(requested, requested)
        if requested == AUTO:
            return RouteDecision(self._auto_target, f"fixed:{self._auto_target}")
        raise ModelNotFound(
            f"The model '{requested}' does not exist; available: {', '.join(self.model_ids)}.",
            param="model",
        )

    def metadata(self, model_id: str) -> dict[str, Any]:
        if model_id == AUTO:
            return {
                "kind": "router",
                "routes_to": self._auto_target,
                "note": "cascade not enabled: every request goes to "
                        f"'{self._auto_target}' (see x-sluice-route)",
            }
        m = self._models[model_id]
        meta: dict[str, Any] = {
            "kind": "model", "tier": m.tier, "context_length": m.context_length,
            "description": m.description, "demo": m.demo,
        }
        if m.demo:
            meta["note"] = DEMO_NOTE
        return meta
