"""Does a request fit its model's context, and if not, what then: reject, route or trim.

Pure: the prompt's token count comes from a function passed in (`Count`: a model and,
for a trimmed chat, the messages kept), so the decision is tested with hand-built counts
and the ingress passes the models' real tokenizers (`sluice.pipeline.token_counter`).

A request fits a model when its prompt plus the answer's room is within the model's
context: the room is `max_tokens` when the request sets it; without it, one token for
`reject` (vLLM's own rule: the answer takes what is left) and `min_output_tokens` for
`route` and `trim` (a request moved or cut to fit should still have room to answer).

The same decision on a floor of the counts (`probe`: a count that is never more than the
model's tokens, found without tokenizing) refuses what the exact counts would: each way to
fit is a test `tokens + room <= context` whose room does not depend on the counts, so a test
the exact counts pass, the floors pass too, and an Overflow on floors is one on counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.schema.context import ContextPolicy, Policy

Messages = list[dict[str, Any]]
Count = Callable[[str, Messages | None], int]  # (model, messages kept or None) -> tokens
KEPT_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class Candidate:
    """A model the request may run on, with its context length."""

    name: str
    context: int


@dataclass(frozen=True)
class Fit:
    """How the request runs: on `model`, with `prompt_tokens`; what was changed to fit."""

    model: str
    prompt_tokens: int
    outcome: str = "fits"  # fits | routed | trimmed | lowered, or two joined by "+"
    max_tokens: int | None = None  # the lowered max_tokens, when lowered
    asked_max_tokens: int | None = None
    kept: tuple[int, ...] | None = None  # indices of the messages sent, when trimmed
    dropped_messages: int = 0
    dropped_tokens: int = 0

    @property
    def overflowed(self) -> bool:
        return self.outcome != "fits"

    def note(self) -> str | None:
        """The x-sluice-context header: what was done, in words and numbers."""
        parts = []
        if "routed" in self.outcome:
            parts.append("routed")
        if "trimmed" in self.outcome:
            parts.append(f"trimmed {self.dropped_messages} messages, "
                         f"{self.dropped_tokens:,} tokens")
        if "lowered" in self.outcome:
            parts.append(f"max_tokens lowered {self.asked_max_tokens:,}->{self.max_tokens:,}")
        return "; ".join(parts) or None


@dataclass(frozen=True)
class Overflow:
    """Fits nowhere under the policy: the 400's numbers."""

    model: str
    context: int
    prompt_tokens: int
    max_tokens: int | None
    policy: Policy
    at_least: bool = False  # prompt_tokens is a floor (the prompt was not tokenized)

    def message(self) -> str:
        """OpenAI's wording (clients parse it), with the policy that was applied."""
        least = "at least " if self.at_least else ""
        if self.max_tokens:
            asked = (f"you requested {least}{self.prompt_tokens + self.max_tokens} tokens "
                     f"({least}{self.prompt_tokens} in the messages, {self.max_tokens} in "
                     f"the completion). Please reduce the length of the messages or "
                     f"completion.")
        else:
            asked = (f"your messages resulted in {least}{self.prompt_tokens} tokens. Please "
                     f"reduce the length of the messages.")
        how = ("; a lower bound from the prompt's size, not tokenized" if self.at_least
               else "")
        return (f"This model's maximum context length is {self.context} tokens. However, "
                f"{asked} (model '{self.model}', context policy '{self.policy}'{how})")


def _room(policy: Policy, settings: ContextPolicy, max_tokens: int | None) -> int:
    if max_tokens:
        return max_tokens
    return 1 if policy == "reject" else settings.min_output_tokens


def turns(messages: Messages) -> tuple[list[int], list[list[int]], list[int]]:
    """(kept head, droppable turns oldest first, kept tail) as message indices.

    The system and developer messages are always kept; so is the latest user message and
    everything after it. The rest are grouped in turns, each starting at a user message, so
    an assistant's tool calls leave with the results that answer them."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"),
                    default=len(messages) - 1)
    head = [i for i in range(last_user) if messages[i].get("role") in KEPT_ROLES]
    groups: list[list[int]] = []
    for i in range(last_user):
        if messages[i].get("role") in KEPT_ROLES:
            continue
        if not groups or messages[i].get("role") == "user":
            groups.append([])
        groups[-1].append(i)
    return head, groups, list(range(last_user, len(messages)))


def _kept(messages: Messages, drop: Sequence[list[int]]) -> tuple[int, ...]:
    gone = {i for group in drop for i in group}
    return tuple(i for i in range(len(messages)) if i not in gone)


class ContextFit:
    """Decide one request's fit (see the module's docstring)."""

    def __init__(self, count: Count) -> None:
        self._count = count

    def decide(self, policy: Policy, settings: ContextPolicy, own: Candidate,
               others: Sequence[Candidate], max_tokens: int | None,
               messages: Messages | None, probe: bool = False) -> Fit | Overflow:
        """`own`: the model asked for (a cascade: its first stage). `others`: where `route`
        may go, cheapest first (a cascade under `reject`: its larger stages). `probe`: only
        whether it fits somewhere (a trim that fits is not searched for its fewest cuts)."""
        prompt = self._count(own.name, None)
        room = _room(policy, settings, max_tokens)
        if prompt + room <= own.context:
            return Fit(own.name, prompt)
        if policy == "trim" and messages is not None:
            found = self._trim(settings, own, messages, prompt, max_tokens, probe)
            if found is not None:
                return found
        for other in others:  # route (or a cascade's later stage)
            counted = self._count(other.name, None)
            if counted + room <= other.context:
                return Fit(other.name, counted, "routed")
        lowered = self._lower(settings, [own, *others] if policy == "route" else [own],
                              own, max_tokens)
        if lowered is not None:
            return lowered
        return Overflow(own.name, own.context, prompt, max_tokens, policy)

    def _lower(self, settings: ContextPolicy, where: Sequence[Candidate], own: Candidate,
               max_tokens: int | None) -> Fit | None:
        if not (settings.lower_max_tokens and max_tokens):
            return None
        for model in where:
            prompt = self._count(model.name, None)
            left = model.context - prompt
            if left >= settings.min_output_tokens:
                outcome = "lowered" if model == own else "routed+lowered"
                return Fit(model.name, prompt, outcome, max_tokens=min(left, max_tokens),
                           asked_max_tokens=max_tokens)
        return None

    def _trim(self, settings: ContextPolicy, own: Candidate, messages: Messages,
              prompt: int, max_tokens: int | None, probe: bool = False) -> Fit | None:
        """The fewest oldest turns dropped for the request to fit within its context less
        the policy's headroom (a binary search: the prompt shrinks as turns go); with
        nothing left to drop, `max_tokens` lowered."""
        _, groups, _ = turns(messages)
        if not groups:
            return None
        room = max_tokens or settings.min_output_tokens
        target = own.context - int(settings.trim_headroom * own.context)

        def tokens(k: int) -> int:
            return self._count(own.name, [messages[i] for i in _kept(messages, groups[:k])])

        least = tokens(len(groups))
        if least + room > own.context:
            if not (settings.lower_max_tokens and max_tokens
                    and least + settings.min_output_tokens <= own.context):
                return None
            kept = _kept(messages, groups)
            return Fit(own.name, least, "trimmed+lowered",
                       max_tokens=own.context - least, asked_max_tokens=max_tokens,
                       kept=kept, dropped_messages=len(messages) - len(kept),
                       dropped_tokens=prompt - least)
        if probe:
            return Fit(own.name, least, "trimmed")
        if least + room > target:
            target = own.context  # the headroom cannot be had: only what must go
        lo, hi, best = 1, len(groups), least  # tokens(hi) fits; find the least k that does
        while lo < hi:
            mid = (lo + hi) // 2
            counted = tokens(mid)
            if counted + room <= target:
                hi, best = mid, counted
            else:
                lo = mid + 1
        kept = _kept(messages, groups[:hi])
        return Fit(own.name, best, "trimmed", kept=kept,
                   dropped_messages=len(messages) - len(kept), dropped_tokens=prompt - best)
