"""The `accounting:` block of a profile: API keys, the ledger, budgets, the alert webhook.

Schema only (pydantic): loading a profile imports no store client; the runtime classes
(BudgetGuard, LedgerWriter, WebhookNotifier) import their settings from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sluice.accounting.tenancy import AuthConfig

PERIODS = ("daily", "monthly")
STREAM = "sluice:ledger"


class Budget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


class LedgerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="Write a record per request.")
    redis_url: str | None = Field(default=None, description="Where the ledger lives "
                                  "(default: the profile's Redis).")
    stream: str = Field(default=STREAM, description="Redis stream key.")
    buffer_max: int = Field(default=100_000, ge=1, description="Records held while the "
                            "store is unreachable; more are dropped and counted.")
    batch: int = Field(default=256, ge=1, description="Records per write round trip.")
    flush_interval_s: float = Field(default=0.2, gt=0, description="Longest a record waits.")
    timeout_s: float = Field(default=2.0, gt=0, description="Per write round trip.")
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


class WebhookConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(pattern=r"^https?://", description="Receives POSTed JSON alerts.")
    timeout_s: float = Field(default=5.0, gt=0, description="Per POST.")



class AccountingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys and tenants.")
    ledger: LedgerConfig = Field(default_factory=LedgerConfig,
                                 description="Per-request records (Redis stream).")
    budgets: tuple[Budget, ...] = Field(default=(), description="Spend limits.")
    budget_refresh_s: float = Field(default=1.0, gt=0, description="How often an ingress "
                                    "re-reads the fleet's spend counters.")
    webhook: WebhookConfig | None = Field(default=None, description="Alert webhook.")

    @model_validator(mode="after")
    def _budgets_sound(self) -> AccountingConfig:
        seen = [(b.scope, b.id) for b in self.budgets]
        if len(seen) != len(set(seen)):
            raise ValueError("accounting.budgets: one budget per key or tenant")
        if self.budgets and not self.ledger.enabled:
            raise ValueError("accounting.budgets need the ledger (its counters hold spend)")
        return self
