"""The `accounting:` block of a profile: API keys, the ledger, budgets, the alert webhook."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sluice.accounting.budgets import Budget
from sluice.accounting.ledger import LedgerConfig
from sluice.accounting.notifier import WebhookConfig
from sluice.accounting.tenancy import AuthConfig


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
