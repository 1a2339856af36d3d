"""The model directory: catalog models, cascade routes, and `auto` when no route claims it.

Explicit models go where asked. Cascade routes (virtual models from the routing config) are
run by the cascade; without a configured `auto` route, `auto` goes to a fixed tier and the
route header says so rather than pretending to cascade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.errors import ModelNotFound
from sluice.schema.catalog import Catalog, CatalogModel
from sluice.schema.routing import RouteConfig, SelectionConfig

AUTO = "auto"
DEMO_NOTE = "random-weight demo model: its output is noise"


@dataclass(frozen=True)
class RouteDecision:
    model: str  # the catalog model that will answer
    route: str  # what x-sluice-route reports


class StaticRouter:
    def __init__(self, catalog: Catalog, auto_tier: str,
                 routes: tuple[RouteConfig, ...] = (),
                 selections: tuple[SelectionConfig, ...] = ()) -> None:
        self._catalog = catalog
        self._models = {m.name: m for m in catalog.models}
        self._auto_target = catalog.by_tier(auto_tier).name
        self._routes = {r.name: r for r in routes}
        self._selections = {s.name: s for s in selections}

    @property
    def model_ids(self) -> list[str]:
        fixed_auto = [] if AUTO in self._routes else [AUTO]
        return [*self._models, *self._routes, *self._selections, *fixed_auto]

    def is_route(self, requested: str) -> bool:
        return requested in self._routes

    def decide(self, requested: str) -> RouteDecision:
        if requested in self._models:
            return RouteDecision(requested, requested)
        if requested == AUTO:
            return RouteDecision(self._auto_target, f"fixed:{self._auto_target}")
        raise ModelNotFound(
            f"The model '{requested}' does not exist; available: {', '.join(self.model_ids)}.",
            param="model",
        )

    def stages(self, requested: str) -> list[CatalogModel]:
        """The models that may answer a request for `requested`, first tried first: a
        route's small then large model; otherwise the one it resolves to (404 if none)."""
        selection = self._selections.get(requested)
        if selection is not None:
            return [self._models[n] for n in selection.candidates]
        route = self._routes.get(requested)
        if route is None:
            return [self._models[self.decide(requested).model]]
        return [self._models[n] for n in (route.small, route.large) if n in self._models]

    def catalog(self) -> list[CatalogModel]:
        return list(self._models.values())

    def models_at_worst(self, requested: str) -> list[CatalogModel]:
        """Every catalog model a request for `requested` may run: a route's small and large
        models and its LLM judge (of every version of the route: a rollout may give the
        request to any); a selection's candidates; otherwise the one it resolves to (404 if
        none)."""
        if requested in self._selections:
            return self.stages(requested)
        route = self._routes.get(requested)
        if route is None:
            return [self._models[self.decide(requested).model]]
        names = _stage_models(route)
        for version in self._routes.values():
            if version.base == requested and version.name != requested:
                names += [n for n in _stage_models(version) if n not in names]
        return [self._models[n] for n in names if n in self._models]

    def metadata(self, model_id: str) -> dict[str, Any]:
        if model_id in self._routes:
            return _route_metadata(self._routes[model_id])
        if model_id in self._selections:
            s = self._selections[model_id]
            return {"kind": "selection", "candidates": list(s.candidates), "task": s.task,
                    "max_ttft_ms": s.max_ttft_ms, "min_quality": s.min_quality,
                    "client_choice": s.client_choice}
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


def _stage_models(route: RouteConfig) -> list[str]:
    """The models a request through this route may run (a model judging its own tier's
    answer runs twice, and counts twice)."""
    names = [route.small, route.large]
    if route.judge is not None and route.judge.judge_model:
        names.append(route.judge.judge_model)
    return names


def _route_metadata(route: RouteConfig) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    if route.pre_router is not None:
        stages.append({"stage": "pre-router", "kind": route.pre_router.kind,
                       "threshold": route.pre_router.threshold,
                       "provenance": route.pre_router.provenance.model_dump(exclude_defaults=True)})
    if route.judge is not None:
        stages.append({"stage": "judge", "kind": route.judge.kind,
                       "threshold": route.judge.threshold,
                       "provenance": route.judge.provenance.model_dump(exclude_defaults=True)})
    meta: dict[str, Any] = {
        "kind": "cascade", "small": route.small, "large": route.large, "stages": stages,
        "streaming": "buffered until judged" if route.judge else "direct",
        "shadow_fraction": route.shadow.fraction, "version": route.variant}
    if route.base != route.name:
        meta["version_of"] = route.base
    return meta
