"""What one answer turned out to be, as every consumer of it reads it: metering, tracing,
pricing and the ledger. Plain data, no framework: accounting and observability both import
it, neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COST_HEADER = "x-sluice-cost-usd"


@dataclass(frozen=True)
class Tokens:
    """An OpenAI usage object's token counts, read in one place: the price, the metrics,
    the trace and the ledger all count the same tokens."""

    prompt: int = 0
    cached: int = 0  # prompt tokens a prefix cache held (never more than the prompt)
    completion: int = 0
    # uncached prompt tokens a provider wrote to its prompt cache (Anthropic's cache
    # creation, `cache_write_tokens` as OpenRouter names it), billed at their own price
    cache_write: int = 0

    @classmethod
    def of(cls, usage: Mapping[str, Any] | None) -> Tokens:
        if not usage:
            return cls()
        prompt = int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = min(prompt, int(details.get("cached_tokens") or 0))
        written = min(prompt - cached, int(details.get("cache_write_tokens") or 0))
        return cls(prompt, cached, int(usage.get("completion_tokens") or 0), written)

    @property
    def uncached_prompt(self) -> int:
        return self.prompt - self.cached


@dataclass(frozen=True)
class Priced:
    usage: dict[str, Any]  # the usage with its cost block
    total_usd: float
    by_model: dict[str, float]


@dataclass
class Outcome:
    status: int
    model: str  # the model that answered ("" when none did)
    route: str
    cache: str
    started: float
    ended: float = 0.0
    first_token_at: float | None = None
    token_events: int = 0
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None  # as sent: with its cost block
    priced: Priced | None = None
    failed: bool = False  # a stream that ended with an error event
    estimated: bool = False  # the usage is an estimate: the stream ended before its usage
    # the versions of a route and of a prompt template that answered, as rollouts name them
    # (`auto@v2`, `prompt:support@v2`; a model's variant is `model`)
    served_variants: tuple[str, ...] = ()

    @property
    def cost_usd(self) -> float:
        return self.priced.total_usd if self.priced else 0.0

    @property
    def duration_s(self) -> float:
        return self.ended - self.started

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_at is None:
            return None
        tokens = (self.usage or {}).get("completion_tokens") or self.token_events
        return (self.ended - self.first_token_at) / (tokens - 1) if tokens > 1 else None
