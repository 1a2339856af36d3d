"""The model catalog: what each model is (its source or hosted endpoint, tier, context
length, prices, SLOs), independent of where and how a profile runs it.

A YAML file under ``platform/`` (``catalog.yaml``); frozen pydantic with ``extra="forbid"``,
as every schema here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sluice.schema.accounting import Pricing
from sluice.schema.base import Frozen, Versioned
from sluice.schema.serving import SLO

# a model, or a variant of one: `large@v2` (a version of `large`, deployed beside it and
# given its traffic by a rollout, `sluice.rollouts`)
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*(@[a-z0-9][a-z0-9._-]*)?$"


class ProviderEndpoint(Frozen):
    """A hosted model behind an OpenAI-compatible API (OpenAI itself, or any provider or
    server that speaks its `/chat/completions` and `/completions`) or Anthropic's Messages
    API (`/messages`: chat only)."""

    api: Literal["openai", "anthropic"] = Field(
        default="openai", description="The API it speaks: `openai` (chat and completions) or "
        "`anthropic` (Messages; chat requests are translated both ways).")
    auth: Literal["bearer", "x-api-key"] | None = Field(
        default=None, description="How its key is sent: `Authorization: Bearer` or "
        "Anthropic's `x-api-key` header; unset: the API's own way (bearer for openai, "
        "x-api-key for anthropic).")
    default_max_tokens: int = Field(
        default=4096, ge=1, description="anthropic: the `max_tokens` sent when the request "
        "names none (Anthropic's API requires it).")
    base_url: str = Field(pattern=r"^https?://", description="The API's base URL, up to "
                          "and including its version, e.g. https://api.openai.com/v1.")
    model: str = Field(min_length=1, description="The provider's own id of the model.")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable that holds its API key (never the key "
        "itself); unset: no key is sent.")
    first_token_timeout_s: float = Field(
        default=30, gt=0, description="A stream: longest wait for its first event; past it "
        "the call fails over (or is a 503).")
    stall_timeout_s: float = Field(
        default=30, gt=0, description="A stream: longest gap between two of its events.")
    request_timeout_s: float = Field(
        default=300, gt=0, description="Not streamed: longest wait for the whole answer "
        "(a provider sends nothing before it is done); past it, as a stream's first event.")
    max_connections: int = Field(default=64, ge=1, description="Concurrent calls at most "
                                 "(the pool's bound), per ingress replica.")

    @property
    def key_header(self) -> str:
        return self.auth or ("x-api-key" if self.api == "anthropic" else "bearer")


class CatalogModel(Frozen, Versioned):
    """What a model is, independent of where it runs."""

    name: str = Field(
        pattern=MODEL_NAME_PATTERN, description="Served model id (the API's `model`)."
    )
    source: str | None = Field(
        default=None, description="Local path (relative to the repo root) or a hub id: a "
        "model Sluice runs on its own engines. Exactly one of source and provider.")
    provider: ProviderEndpoint | None = Field(
        default=None, description="A hosted model Sluice calls over HTTP instead of running "
        "it (no engine, no entry in the profile's models).")
    failover: tuple[str, ...] = Field(
        default=(), description="Other catalog models, in order, that answer a request this "
        "one fails before its first byte (engine or provider down, overloaded, rate-limited, "
        "timed out); each is put aside for a cooldown after repeated failures.")
    tier: Literal["small", "large"] = Field(description="Cascade tier this model fills.")
    context_length: int = Field(gt=0, description="Maximum prompt + completion tokens.")
    demo: bool = Field(
        default=False, description="Random-weight demo model: its output is noise."
    )
    description: str = Field(default="", description="Shown in /v1/models metadata.")
    version: str = Field(
        default="v1", pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="The variant label of a model (`x-sluice-variant`); a variant named "
        "`base@label` is that label, whatever this says.")
    slo: SLO = Field(default_factory=SLO, description="Latency objectives (capacity planning, "
                     "autoscaling).")
    pricing: Pricing | None = Field(default=None, description="What an answer costs: token "
                                    "prices or GPU time (sluice.accounting.cost).")

    @model_validator(mode="after")
    def _one_kind(self) -> CatalogModel:
        if (self.source is None) == (self.provider is None):
            raise ValueError(f"model {self.name}: set exactly one of source (a model Sluice "
                             "runs) and provider (a hosted one)")
        if self.name in self.failover:
            raise ValueError(f"model {self.name}: failover names the model itself")
        return self

    @property
    def local(self) -> bool:
        """Sluice runs it on engines of its own (it has a source, not a provider)."""
        return self.provider is None



class Catalog(Frozen):
    """Every model the platform can serve."""

    models: tuple[CatalogModel, ...] = Field(description="The models, by tier.")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: tuple[CatalogModel, ...]) -> tuple[CatalogModel, ...]:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in catalog: {names}")
        if "auto" in names:
            raise ValueError("'auto' is reserved for the cascade and cannot name a model")
        return models

    @model_validator(mode="after")
    def _failover_known(self) -> Catalog:
        names = {m.name for m in self.models}
        for m in self.models:
            if m.base not in names:
                raise ValueError(f"model {m.name}: a variant of '{m.base}', which the catalog "
                                 "does not have")
            stray = [f for f in m.failover if f not in names]
            if stray:
                raise ValueError(f"model {m.name}: failover names unknown model(s) {stray}")
        return self

    @property
    def local(self) -> tuple[CatalogModel, ...]:
        """The models Sluice runs itself (each has engines and a profile entry)."""
        return tuple(m for m in self.models if m.local)

    def get(self, name: str) -> CatalogModel:
        """The model named `name` (KeyError if the catalog has none)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def by_tier(self, tier: str) -> CatalogModel:
        for m in self.models:
            if m.tier == tier and m.base == m.name:
                return m
        raise KeyError(tier)
