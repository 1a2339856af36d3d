"""Step 5 of the handler's order, last: the request's prompt in tokens against its model's
context, and the model's overflow policy applied (`sluice.router.context_fit`).

What it changes in the request: the model (`route`, or a cascade whose first stage is too
small for the prompt going straight to the stage that fits, as its escalation would), the
messages (`trim`: the kept ones, as sent), `max_tokens` (lowered). What it leaves: the body
as sent (cache keys read it). The header `x-sluice-context: reject|route|trim` picks the
policy per request where the profile lets clients choose.

Before any prompt is tokenized, the same decision is made on each prompt's floor (its
rendered text's bytes over the longest token's: `token_counter.TokenBytes`): a request that
overflows on floors overflows on counts, and is refused without tokenizing (a near-8 MiB
body would otherwise hold the model's tokenizer for seconds); the 400 says "at least".
Everything else is decided on exact counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ray.serve.llm.openai_api_models import ChatCompletionRequest

from sluice.accounting.tenancy import Principal
from sluice.errors import ContextLengthExceeded, InvalidRequest, SluiceError
from sluice.pipeline.request import ParsedRequest
from sluice.pipeline.token_counter import (
    INLINE_CHARS,
    Messages,
    Prompt,
    TokenCounter,
    plain_messages,
)
from sluice.router.context_fit import Candidate, ContextFit, Fit, Overflow
from sluice.router.static import StaticRouter
from sluice.schema.context import POLICIES, ContextSettings, Policy

HEADER = "x-sluice-context"
Price = Callable[[str, int, int], float]  # (model, prompt tokens, completion tokens) -> USD
Record = Callable[[str, str, str, str], None]  # (model, policy, outcome, tenant)


@dataclass(frozen=True)
class Gated:
    """The request's fit, once applied: what the headers and the ledger say."""

    fit: Fit
    policy: Policy

    @property
    def note(self) -> str | None:
        return self.fit.note()


class ContextGate:
    def __init__(self, settings: ContextSettings, router: StaticRouter,
                 counter: TokenCounter, price: Price, record: Record) -> None:
        self._settings, self._router, self._counter = settings, router, counter
        self._price, self._record = price, record

    def lowers(self, request: ParsedRequest) -> bool:
        """The model's policy may lower max_tokens (so a max_tokens above every context is
        lowered, not refused)."""
        return self._settings.of(str(request.llm.model)).lower_max_tokens

    def _policy(self, request: ParsedRequest) -> Policy:
        asked = request.headers.get(HEADER)
        if asked is None or not self._settings.client_choice:
            return self._settings.of(str(request.llm.model)).policy
        value = asked
        if value not in POLICIES:
            raise InvalidRequest(f"Header '{HEADER}' must be one of {', '.join(POLICIES)}; "
                                 f"got {asked[:40]!r}.", param=HEADER)
        return value  # type: ignore[return-value]

    def _others(self, policy: Policy, stages: list[Candidate], principal: Principal,
                request: ParsedRequest, room: int) -> list[Candidate]:
        """Where `route` may go, cheapest first: the catalog's models the key may use, not a
        rollout's variant (`base@label`: its rollout's split gives it traffic, a route must
        not bypass it). Cheapest as the request is held against its budgets (the handler's
        `_worst_usd`: the prompt's byte bound, then max_tokens x n, or the rest of the
        model's context when max_tokens is unset), so the model picked is the one its
        budgets admit first; then at the request's likely cost (`room` completion tokens)."""
        if policy != "route":
            return stages[1:]  # a cascade's later stage takes what its first cannot
        allowed = []
        for model in self._router.catalog():
            if model.name != model.base:
                continue
            try:
                principal.may_use(model.name)
            except SluiceError:
                continue
            if model.name != stages[0].name:
                allowed.append(Candidate(model.name, model.context_length))
        bound, guess = request.prompt_tokens_bound(), request.prompt_tokens_guess()
        n = request.llm.n or 1
        return sorted(allowed, key=lambda c: (self.held(c, bound, request.max_output_tokens, n),
                                              self._price(c.name, guess, room * n), c.context))

    def held(self, model: Candidate, bound: int, asked: int | None, n: int) -> float:
        """What a request of `bound` prompt tokens (at most) asking `asked` completion tokens
        (None: unset) n times is held against its budgets on `model`."""
        return self._price(model.name, bound, (asked or max(1, model.context - bound)) * n)

    def _hosted(self, name: str) -> bool:
        """A provider's model the route may use (`route_to_hosted`): no tokenizer here, so
        its fit is judged on the prompt's bound (never more tokens than bytes), which can
        only overstate the prompt."""
        return self._settings.route_to_hosted and any(
            m.name == name and m.provider is not None for m in self._router.catalog())

    async def apply(self, request: ParsedRequest, principal: Principal) -> Gated | None:
        """None: the model is unknown here (the router's 404 comes later) or has no
        tokenizer (its engine decides). Raises the 400 of an overflow that fits nowhere."""
        llm, name = request.llm, str(request.llm.model)
        try:
            stages = [Candidate(m.name, m.context_length)
                      for m in self._router.stages(name)]
        except SluiceError:
            return None
        if not stages or not all(self._counter.knows(c.name) for c in stages):
            return None
        policy = self._policy(request)
        settings = self._settings.of(name)
        messages: Messages | None = (plain_messages(llm.messages)
                                     if isinstance(llm, ChatCompletionRequest) else None)
        asked = request.max_output_tokens
        others = self._others(policy, stages, principal, request,
                              asked or settings.min_output_tokens)
        others = [c for c in others if self._counter.knows(c.name) or self._hosted(c.name)]
        bound = request.prompt_tokens_bound()
        whole: dict[str, Prompt] = {}  # each model's rendering of the whole prompt, once

        def prompt(model: str, kept: Messages | None) -> Prompt:
            if kept is None and model in whole:
                return whole[model]
            made = self._counter.prompt_now(model, llm, kept if kept is not None
                                            else messages)
            if made is None:
                raise _NoTokenizer(model)
            if kept is None:
                whole[model] = made
            return made

        def hosted(model: str) -> bool:  # (route only: a trim is on the model's own tokens)
            return not self._counter.knows(model) and self._hosted(model)

        def count(model: str, kept: Messages | None) -> int:
            return bound if hosted(model) else self._counter.count_prompt(
                model, prompt(model, kept))

        def floor(model: str, kept: Messages | None) -> int:
            return bound if hosted(model) else self._counter.floor_prompt(
                model, prompt(model, kept))

        def decide() -> Fit | Overflow:
            least = ContextFit(floor).decide(policy, settings, stages[0], others, asked,
                                             messages, probe=True)
            if isinstance(least, Overflow):  # overflows on floors: on counts too
                return dataclasses.replace(least, at_least=True)
            return ContextFit(count).decide(policy, settings, stages[0], others, asked,
                                            messages)

        try:
            if (request.body_bytes + request.added_bytes <= INLINE_CHARS
                    and self._counter.loaded(stages[0].name)):
                verdict = decide()
            else:
                verdict = await asyncio.to_thread(decide)
        except _NoTokenizer:
            return None
        return self._applied(request, principal, policy, verdict, stages)

    def _applied(self, request: ParsedRequest, principal: Principal, policy: Policy,
                 verdict: Fit | Overflow, stages: list[Candidate]) -> Gated:
        llm, name = request.llm, str(request.llm.model)
        if isinstance(verdict, Overflow):
            self._record(name, policy, "rejected", principal.tenant)
            # the prompt alone too long: its field; else the completion tokens asked for
            prompt_fits = verdict.prompt_tokens < verdict.context
            field = request.prompt_field if not (prompt_fits and verdict.max_tokens) else (
                "max_completion_tokens" if llm.__dict__.get("max_completion_tokens")
                else "max_tokens")
            raise ContextLengthExceeded(verdict.message(), param=field)
        fit = verdict
        request.prompt_tokens = fit.prompt_tokens
        if not fit.overflowed:
            return Gated(fit, policy)
        self._record(name, policy, fit.outcome, principal.tenant)
        if fit.model != stages[0].name:
            llm.model = fit.model  # (a cascade's later stage, or another catalog model)
        if fit.kept is not None:
            assert isinstance(llm, ChatCompletionRequest)
            llm.messages = [llm.messages[i] for i in fit.kept]
        if fit.max_tokens is not None:
            if isinstance(llm, ChatCompletionRequest) and llm.max_completion_tokens:
                llm.max_completion_tokens = fit.max_tokens
            else:
                llm.max_tokens = fit.max_tokens
        return Gated(fit, policy)


class _NoTokenizer(Exception):
    """A candidate's tokenizer could not be loaded: the engines decide."""
