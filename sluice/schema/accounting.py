"""The `accounting:` block of a profile (API keys, the ledger, budgets, the alert webhook)
and the `pricing:` of a catalog model.

Schema only: loading a profile imports no store client. The runtime classes (Authenticator,
BudgetGuard, LedgerWriter, WebhookNotifier) and the cost computation (sluice.accounting.cost)
import their settings from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sluice.schema.base import Frozen

ANONYMOUS = "anonymous"
_ID = r"^[A-Za-z0-9._-]{1,64}$"
PERIODS = ("daily", "monthly")
STREAM = "sluice:ledger"


class ApiKey(Frozen):
    id: str = Field(pattern=_ID, description="The key's id: what ledgers and reports show.")
    tenant: str = Field(pattern=_ID, description="The tenant it spends for.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the secret.")
    admin: bool = Field(default=False, description="May read every tenant's usage and "
                        "manage the keys in the key store.")
    models: tuple[str, ...] = Field(default=(), description="The models (ids of "
                                    "/v1/models) this key may call; empty: all. Another "
                                    "model is a 403.")


class StoredKey(ApiKey):
    """A key created at runtime (`sluice keys create`, `POST /v1/admin/keys`) and kept in
    Redis: the hash of its secret, never the secret, with its own limits and budget."""

    requests_per_minute: int | None = Field(default=None, gt=0, description="Its RPM limit.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="Its TPM limit.")
    daily_usd: float | None = Field(default=None, gt=0, description="Its budget per UTC day.")
    monthly_usd: float | None = Field(default=None, gt=0, description="Its budget per UTC "
                                      "month.")
    created: float = Field(default=0.0, ge=0, description="Unix time of creation.")
    rotated: float | None = Field(default=None, description="Unix time of the last rotation.")

    def rate_limit(self) -> RateLimit | None:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            return None
        return RateLimit(scope="key", id=self.id, requests_per_minute=self.requests_per_minute,
                         tokens_per_minute=self.tokens_per_minute)

    def budget(self) -> Budget | None:
        if self.daily_usd is None and self.monthly_usd is None:
            return None
        return Budget(scope="key", id=self.id, daily_usd=self.daily_usd,
                      monthly_usd=self.monthly_usd)

    def public(self) -> dict[str, object]:
        """What listing a key shows: everything but the hash of its secret."""
        return self.model_dump(exclude={"sha256"})


class AuthConfig(Frozen):
    required: bool = Field(default=False, description="Refuse requests without a known key.")
    keys: tuple[ApiKey, ...] = Field(default=(), description="The API keys of the profile "
                                     "(GitOps: they cannot be rotated or revoked at runtime).")
    max_tags: int = Field(default=8, ge=0, description="Most tags one request may carry.")
    key_store: bool = Field(default=True, description="Also accept the keys created at "
                            "runtime, kept in the ledger's Redis (`sluice keys create`).")
    key_refresh_s: float = Field(default=2.0, gt=0, description="Longest an ingress replica "
                                 "uses its copy of the key store before re-reading it: a "
                                 "created, rotated or revoked key takes effect everywhere "
                                 "within this.")

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        for field in ("id", "sha256"):
            values = [getattr(k, field) for k in self.keys]
            if len(values) != len(set(values)):
                raise ValueError(f"auth.keys: duplicate {field}")
        if self.required and not self.keys:
            raise ValueError("auth.required needs at least one key")
        return self

    @field_validator("keys")
    @classmethod
    def _not_anonymous(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        if any(k.id == ANONYMOUS for k in keys):
            raise ValueError(f"auth.keys: the id '{ANONYMOUS}' is reserved")
        return keys


class Budget(Frozen):
    scope: Literal["key", "tenant"] = Field(description="What the budget limits.")
    id: str = Field(description="The key id or tenant name.")
    daily_usd: float | None = Field(default=None, gt=0, description="Limit per UTC day.")
    monthly_usd: float | None = Field(default=None, gt=0, description="Limit per UTC month.")
    soft_fraction: float = Field(default=0.8, gt=0, le=1, description="Share of a limit at "
                                 "which the budget is soft (alert, downgrade).")
    downgrade_auto: bool = Field(default=True, description="At the soft limit, answer "
                                 "cascade routes (`auto`) with their small model.")

    @model_validator(mode="after")
    def _a_limit(self) -> Budget:
        if self.daily_usd is None and self.monthly_usd is None:
            raise ValueError(f"budget {self.scope}:{self.id} needs daily_usd or monthly_usd")
        return self

    def limit(self, period: str) -> float | None:
        return self.daily_usd if period == "daily" else self.monthly_usd


class LedgerConfig(Frozen):
    enabled: bool = Field(default=True, description="Write a record per request.")
    redis_url: str | None = Field(default=None, description="Where the ledger lives "
                                  "(default: the profile's Redis).")
    stream: str = Field(default=STREAM, description="Redis stream key.")
    buffer_max: int = Field(default=100_000, ge=1, description="Records held while the "
                            "store is unreachable; more are dropped and counted.")
    batch: int = Field(default=256, ge=1, description="Records per write round trip.")
    flush_interval_s: float = Field(default=0.2, gt=0, description="Longest a record waits.")
    timeout_s: float = Field(default=2.0, gt=0, description="Per write round trip.")
    sync: bool = Field(default=True, description="An answer's last bytes wait until its "
                       "record is written (up to sync_timeout_s; not while the store is "
                       "down), so an ingress killed right after answering loses no record. "
                       "false: records are written only in the background, within "
                       "flush_interval_s, and such a kill loses the buffered ones.")
    sync_timeout_s: float = Field(default=0.5, gt=0, description="Longest an answer waits "
                                  "for its record (then it is sent; the record stays "
                                  "buffered and is written in the background).")
    retry_max_s: float = Field(default=5.0, gt=0, description="Longest backoff between "
                               "retries while the store is down.")
    dedupe_ttl_s: int = Field(default=2 * 86400, ge=60, description="How long a written "
                              "record's id is remembered (replays within it are no-ops).")
    retention_days: int = Field(default=400, ge=1, description="Entries older than this "
                                "are trimmed from the stream.")
    replay_lag_s: float = Field(default=86400, gt=0, description="Latest a record is "
                                "expected to be written after its request (an outage "
                                "replayed later is outside /v1/usage windows that ended "
                                "before it).")


class WebhookConfig(Frozen):
    url: str = Field(pattern=r"^https?://", description="Receives POSTed JSON alerts.")
    timeout_s: float = Field(default=5.0, gt=0, description="Per POST.")


class RateLimit(Frozen):
    """Requests and tokens per minute for one key or tenant (or, with id `*`, for each one
    that has no limit of its own: every key or tenant gets its own counters)."""

    scope: Literal["key", "tenant"] = Field(description="What the limit applies to.")
    id: str = Field(pattern=r"^(\*|[A-Za-z0-9._-]{1,64})$",
                    description="The key id or tenant name; `*`: each one without its own.")
    requests_per_minute: int | None = Field(default=None, gt=0, description="RPM.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="TPM: prompt "
                                          "tokens plus the completion tokens asked for.")

    @model_validator(mode="after")
    def _a_limit(self) -> RateLimit:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError(f"rate limit {self.scope}:{self.id} needs requests_per_minute "
                             "or tokens_per_minute")
        return self


class RateLimitsConfig(Frozen):
    """Per-key and per-tenant limits, counted in Redis so every ingress replica shares them."""

    limits: tuple[RateLimit, ...] = Field(default=(), description="The limits.")
    redis_url: str | None = Field(default=None, description="Where the counters live "
                                  "(default: the profile's Redis).")
    store_timeout_ms: float = Field(default=50, gt=0, description="Longest the check waits "
                                    "for Redis before the store-down policy applies.")
    on_store_down: Literal["local", "closed"] = Field(
        default="local", description="Redis unreachable: `local` keeps limiting on each "
        "replica alone (its share: the limit / ingress replicas); `closed` refuses with 503.")
    default_completion_tokens: int = Field(
        default=256, gt=0, description="Completion tokens reserved for a request that sets "
        "no max_tokens (corrected to the real count when it ends).")

    @model_validator(mode="after")
    def _one_each(self) -> RateLimitsConfig:
        seen = [(lim.scope, lim.id) for lim in self.limits]
        if len(seen) != len(set(seen)):
            raise ValueError("accounting.rate_limits: one limit per key or tenant (and per *)")
        return self


class AccountingConfig(Frozen):
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys and tenants.")
    ledger: LedgerConfig = Field(default_factory=LedgerConfig,
                                 description="Per-request records (Redis stream).")
    budgets: tuple[Budget, ...] = Field(default=(), description="Spend limits.")
    budget_refresh_s: float = Field(default=1.0, gt=0, description="How often an ingress "
                                    "re-reads the fleet's spend counters.")
    budget_hold_timeout_s: float = Field(default=0.25, gt=0, description="Longest a "
                                         "request's budget hold waits for Redis before this "
                                         "replica's own view decides.")
    webhook: WebhookConfig | None = Field(default=None, description="Alert webhook.")
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig,
                                          description="Requests and tokens per minute.")

    @model_validator(mode="after")
    def _budgets_sound(self) -> AccountingConfig:
        seen = [(b.scope, b.id) for b in self.budgets]
        if len(seen) != len(set(seen)):
            raise ValueError("accounting.budgets: one budget per key or tenant")
        if self.budgets and not self.ledger.enabled:
            raise ValueError("accounting.budgets need the ledger (its counters hold spend)")
        return self


class TokenPrices(Frozen):
    input_per_1m: float = Field(ge=0, description="USD per 1M uncached input tokens.")
    cached_input_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M cached input tokens (input price if unset).")
    cache_write_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens written to a provider's "
        "prompt cache (Anthropic's cache creation, `prompt_tokens_details.cache_write_tokens` "
        "of the usage; input price if unset).")
    output_per_1m: float = Field(ge=0, description="USD per 1M output tokens.")


class GpuTime(Frozen):
    hourly_usd: float = Field(gt=0, description="What one replica costs per hour.")
    tokens_per_s: float = Field(gt=0, description="Tokens (uncached input + output) one "
                                "replica processes per second at its sustainable load.")


class CatalogPrices(Frozen):
    """A hosted model's token prices from a maintained price catalog, not typed by hand."""

    package: Literal["genai-prices"] = Field(
        default="genai-prices", description="The catalog: pydantic's genai-prices package "
        "(its bundled snapshot, the version pyproject.toml pins; updated by upgrading it).")
    provider: str = Field(min_length=1, description="The catalog's provider id, e.g. "
                          "`openai`, `anthropic`, `google`.")
    model: str = Field(min_length=1, description="The provider's model id, as the catalog "
                       "matches it.")


class Pricing(Frozen):
    """How a catalog model is priced: exactly one of the three ways."""

    mode: Literal["tokens", "gpu_time", "catalog"] = Field(description="Which price applies.")
    tokens: TokenPrices | None = Field(default=None, description="For mode `tokens`.")
    gpu_time: GpuTime | None = Field(default=None, description="For mode `gpu_time`.")
    catalog: CatalogPrices | None = Field(default=None, description="For mode `catalog`: "
                                          "token prices looked up when the ingress starts.")

    @model_validator(mode="after")
    def _one_way(self) -> Pricing:
        if getattr(self, self.mode) is None:
            raise ValueError(f"pricing mode '{self.mode}' needs its `{self.mode}:` block")
        return self
