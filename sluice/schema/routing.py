"""Schema of the routing config: the cascades the platform serves as virtual models.

A route (e.g. `auto`) is a virtual model id with up to two stages: a pre-generation router
that may send the prompt straight to the large model, and a judge that grades the small
model's answer and escalates below its threshold. Every threshold carries its provenance:
either `calibrated` (written by `sluice route calibrate`, naming the data, its hash and the
target) or `manual` with a stated reason, so no number in here is unexplained magic.

A route can have versions: `auto@v2` in the same file (other thresholds, judges or stages) is
a variant of `auto`, which clients may ask for by name and which a rollout of `auto`
(`sluice rollout start auto --to v2`) gives a share of the requests for `auto`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sluice.schema.base import Frozen, Versioned

ROUTE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# a cascade route, or a version of one: `auto@v2`
ROUTE_VARIANT_PATTERN = r"^[a-z0-9][a-z0-9._-]*(@[a-z0-9][a-z0-9._-]*)?$"


class Provenance(Frozen):
    """Where a threshold came from."""

    method: Literal["calibrated", "manual"] = Field(
        description="'calibrated': fitted by `sluice route calibrate`; 'manual': set by hand "
        "(tests, overrides) and `reason` says why.")
    reason: str = Field(default="", description="Why a manual threshold has this value.")
    data: str = Field(default="", description="Labeled file the threshold was fitted on.")
    data_sha256: str = Field(default="", description="SHA-256 of that file.")
    target: str = Field(default="", description="What was aimed at, e.g. 'large_share=0.5'.")
    metric: str = Field(default="", description="Quality metric of the labels.")
    split: str = Field(default="", description="How calibration and held-out parts were cut.")
    calibration: dict[str, float] = Field(
        default_factory=dict, description="Share/quality reached on the calibration part.")
    held_out: dict[str, float] = Field(
        default_factory=dict, description="Share/quality measured on the held-out part.")

    @model_validator(mode="after")
    def _explained(self) -> Provenance:
        if self.method == "manual" and not self.reason.strip():
            raise ValueError("a manual threshold needs a 'reason'")
        if self.method == "calibrated" and not (self.data and self.data_sha256 and self.target):
            raise ValueError("a calibrated threshold needs 'data', 'data_sha256' and 'target'")
        return self


class Artifact(Frozen):
    """A fitted classifier on disk (joblib), checked against its hash before it is loaded."""

    path: str = Field(description="File path, relative to the routing config's folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file.")


class PreRouterConfig(Frozen):
    """Stage 1: score the prompt alone; below threshold, go straight to the large model."""

    kind: Literal["learned-prompt"] = Field(
        description="Logistic regression on MiniLM embeddings of the prompt.")
    artifact: Artifact = Field(description="The fitted router.")
    threshold: float = Field(ge=0, le=1, description="P(small is enough) below which the "
                             "prompt goes to the large model.")
    timeout_ms: float = Field(default=500, gt=0, description="Longest scoring time; over it "
                              "the request falls back to the large model.")
    provenance: Provenance = Field(description="Where the threshold came from.")


class JudgeConfig(Frozen):
    """Stage 2: grade the small model's answer; below threshold, escalate."""

    kind: Literal["logprob", "llm", "learned", "answer-checks"] = Field(
        description="'logprob': the small model's own token confidence; 'llm': a judge "
        "model's P(Yes) to 'is this answer correct?'; 'learned': MiniLM embeddings of prompt "
        "and answer plus answer checks, logistic regression; 'answer-checks': the checks only.")
    threshold: float = Field(ge=0, le=1, description="Score below which the request escalates.")
    artifact: Artifact | None = Field(
        default=None, description="Fitted classifier ('learned', 'answer-checks').")
    judge_model: str | None = Field(default=None, description="Catalog model that grades "
                                    "('llm').")
    reduce: Literal["mean", "min"] = Field(
        default="mean", description="'logprob': geometric mean or minimum token probability.")
    timeout_ms: float = Field(default=2000, gt=0, description="Longest judging time; over it "
                              "the request falls back to the large model.")
    provenance: Provenance = Field(description="Where the threshold came from.")

    @model_validator(mode="after")
    def _needs(self) -> JudgeConfig:
        if self.kind in ("learned", "answer-checks") and self.artifact is None:
            raise ValueError(f"judge kind '{self.kind}' needs an 'artifact'")
        if self.kind == "llm" and not self.judge_model:
            raise ValueError("judge kind 'llm' needs a 'judge_model'")
        return self


class ShadowConfig(Frozen):
    """Online judge reliability: re-ask the large model for a sample of accepted answers."""

    fraction: float = Field(default=0.0, ge=0, le=1, description="Share of accepted small "
                            "answers also sent to the large model in the background.")
    max_in_flight: int = Field(default=4, ge=1, description="Concurrent shadow calls; a sample "
                               "drawn while this many run is skipped and counted.")
    agreement: Literal["final-answer", "text-overlap"] = Field(
        default="final-answer", description="How two answers agree: same final number (text "
        "overlap when either has none), or token overlap alone.")
    overlap_threshold: float = Field(default=0.5, ge=0, le=1, description="Token-set Jaccard "
                                     "at or above which two texts agree.")
    window: int = Field(default=500, ge=1, description="Most recent shadow pairs the "
                        "estimate is computed over.")
    min_samples: int = Field(default=20, ge=1, description="Pairs needed before warning.")
    warn_below: float = Field(default=0.8, ge=0, le=1, description="Reliability under which "
                              "the platform warns (research: cascades degrade fast below 80%).")


class RouteConfig(Frozen, Versioned):
    """One virtual model served by a cascade."""

    name: str = Field(pattern=ROUTE_VARIANT_PATTERN, description="Model id clients ask for; "
                      "`<route>@<label>` is a version of the route `<route>` of this file.")
    version: str = Field(default="v1", pattern=ROUTE_NAME_PATTERN,
                         description="The variant label of a route (`x-sluice-variant`); a "
                         "route named `base@label` is that label, whatever this says.")
    small: str = Field(description="Catalog model tried first.")
    large: str = Field(description="Catalog model escalated to; also the safe fallback.")
    pre_router: PreRouterConfig | None = Field(default=None, description="Stage 1, optional.")
    judge: JudgeConfig | None = Field(default=None, description="Stage 2, optional. Without "
                                      "it the route streams the chosen model directly.")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig,
                                 description="Judge reliability sampling (needs a judge).")

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        if self.small == self.large:
            raise ValueError("'small' and 'large' must be different models")
        if self.shadow.fraction > 0 and self.judge is None:
            raise ValueError("shadow sampling measures a judge; this route has none")
        return self



class SelectionConfig(Frozen):
    """A virtual model that picks, per request, the cheapest candidate meeting the request's
    latency and quality bars (`sluice.router.selection`)."""

    name: str = Field(pattern=ROUTE_NAME_PATTERN, description="Model id clients ask for.")
    candidates: tuple[str, ...] = Field(min_length=2, description="Catalog models (local or "
                                        "hosted) it may choose, ties broken in this order.")
    quality: Artifact | None = Field(
        default=None, description="Measured quality per task type and model (YAML written by "
        "`sluice route quality`), checked against its hash; without it every quality bar is "
        "unmet.")
    task: str = Field(default="general", description="Task type when the request names none "
                      "(x-sluice-task).")
    max_ttft_ms: float | None = Field(default=None, gt=0, description="Default latency bar: "
                                      "measured TTFT p95 at most this.")
    min_quality: float | None = Field(default=None, ge=0, le=1, description="Default quality "
                                      "bar for the task.")
    client_choice: bool = Field(default=True, description="Requests may set their own bars "
                                "(x-sluice-task, x-sluice-max-ttft-ms, x-sluice-min-quality).")
    expected_output_tokens: int = Field(default=256, ge=1, description="Completion length "
                                        "priced when the request sets no max_tokens.")
    window_s: float = Field(default=300, gt=0, description="Latency measured over the last "
                            "this many seconds.")
    min_samples: int = Field(default=20, ge=1, description="Samples before a model's p95 "
                             "counts; fewer: unmeasured (passes a latency bar).")

    @model_validator(mode="after")
    def _distinct(self) -> SelectionConfig:
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"candidates repeat a model: {list(self.candidates)}")
        return self


class RoutingConfig(Frozen):
    """Every cascade route and selection. Loaded from the file a profile names."""

    routes: tuple[RouteConfig, ...] = Field(default=(), description="The cascades.")
    selections: tuple[SelectionConfig, ...] = Field(
        default=(), description="Virtual models choosing by price, latency and quality.")
    base_dir: Path = Field(default=Path("."), description="Folder artifact paths resolve "
                           "against (set by the loader).")

    @model_validator(mode="after")
    def _unique(self) -> RoutingConfig:
        names = [r.name for r in self.routes] + [s.name for s in self.selections]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate route names: {names}")
        bases = {r.name for r in self.routes if r.base == r.name}
        for i, r in enumerate(self.routes):
            if r.base not in bases:
                raise ValueError(f"routes[{i}].name: '{r.name}' is a version of '{r.base}', "
                                 "which is not a cascade route of this file")
        return self

    def variants(self, route: str) -> tuple[RouteConfig, ...]:
        """The route `route` and its versions (`auto`, `auto@v2`, ...), the route first."""
        return tuple(r for r in self.routes if r.base == route)

    def check_models(self, catalog_models: set[str]) -> None:
        """Every model a route names exists; no route shadows a real model."""
        for i, r in enumerate(self.routes):
            if r.name in catalog_models:
                raise ValueError(f"routes[{i}].name: '{r.name}' is a catalog model")
            for field, model in (("small", r.small), ("large", r.large),
                                 ("judge.judge_model", r.judge and r.judge.judge_model)):
                if model and model not in catalog_models:
                    raise ValueError(f"routes[{i}].{field}: unknown model '{model}'; "
                                     f"catalog has {sorted(catalog_models)}")
        for i, s in enumerate(self.selections):
            if s.name in catalog_models:
                raise ValueError(f"selections[{i}].name: '{s.name}' is a catalog model")
            for model in s.candidates:
                if model not in catalog_models:
                    raise ValueError(f"selections[{i}].candidates: unknown model '{model}'; "
                                     f"catalog has {sorted(catalog_models)}")

    def artifact_path(self, artifact: Artifact) -> Path:
        return (self.base_dir / artifact.path).resolve()

    def portable_routes(self) -> list[dict[str, Any]]:
        """The routes as plain data with absolute artifact paths: valid in a file anywhere
        (test and benchmark profiles add routes to the shipped ones this way)."""
        routes = []
        for route in self.routes:
            data = route.model_dump(mode="json", exclude_none=True)
            for stage in ("pre_router", "judge"):
                artifact = getattr(route, stage) and getattr(route, stage).artifact
                if artifact is not None:
                    data[stage]["artifact"]["path"] = str(self.artifact_path(artifact))
            routes.append(data)
        return routes

    def portable_selections(self) -> list[dict[str, Any]]:
        """The selections as plain data with absolute quality paths (as portable_routes)."""
        out = []
        for selection in self.selections:
            data = selection.model_dump(mode="json", exclude_none=True)
            if selection.quality is not None:
                data["quality"]["path"] = str(self.artifact_path(selection.quality))
            out.append(data)
        return out
