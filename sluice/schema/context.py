"""What happens to a request whose prompt and answer do not fit its model's context.

Counted in tokens before any engine sees the request (`sluice.pipeline.token_counter`);
decided by `sluice.router.context_fit`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sluice.schema.base import Frozen

Policy = Literal["reject", "route", "trim"]
POLICIES: tuple[Policy, ...] = ("reject", "route", "trim")


class ContextPolicy(Frozen):
    """One model's (or route's) answer to an overflow."""

    policy: Policy = Field(
        default="reject",
        description="'reject': 400 `context_length_exceeded` naming the limit and the count "
        "(OpenAI's behaviour). 'route': the cheapest catalog model the key may use whose "
        "context fits (said in x-sluice-model and x-sluice-context). 'trim' (chat): drop "
        "the oldest turns after the system messages until the request fits, never the "
        "latest user message or what follows it (said in x-sluice-context).")
    lower_max_tokens: bool = Field(
        default=False,
        description="When the prompt fits but the prompt plus `max_tokens` does not (after "
        "routing or trimming), lower `max_tokens` to what remains (said in "
        "x-sluice-context) instead of refusing.")
    trim_headroom: float = Field(
        default=0.2, ge=0, lt=0.9,
        description="`trim` cuts this share of the context more than it must: the kept "
        "conversation then grows for a few turns before it is cut again, and those turns "
        "reuse its prefix from the engine's prefix cache (a conversation cut to the brim "
        "loses its oldest turn every turn, so its prompt's start changes every time and "
        "nothing is reused). 0: drop only what must go.")
    min_output_tokens: int = Field(
        default=16, ge=1,
        description="Room a routed, trimmed or lowered request keeps for its answer: a "
        "request without `max_tokens` needs this much left after its prompt, and "
        "`max_tokens` is never lowered below it.")


class ContextSettings(Frozen):
    """The overflow policy of every model and route, and whether a client may choose."""

    default: ContextPolicy = Field(default_factory=ContextPolicy,
                                   description="Policy of a model or route not named below.")
    models: dict[str, ContextPolicy] = Field(
        default_factory=dict,
        description="Policy per served model or route name (small, large, auto, ...).")
    client_choice: bool = Field(
        default=True,
        description="A request may pick its policy with the header `x-sluice-context: "
        "reject|route|trim` (the model's other settings stay).")
    route_to_hosted: bool = Field(
        default=False,
        description="`route` may send a request for a model of your own to a provider's "
        "hosted model (the prompt leaves your machines): off unless you say so.")

    def of(self, model: str) -> ContextPolicy:
        return self.models.get(model, self.default)
