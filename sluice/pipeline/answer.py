"""What the pipeline answers: plain data, before anything is rendered as HTTP.

An Answer says which model answered and how it was chosen (route, cache status, replica,
scores), and carries the body as data: a whole JSON answer, or a stream of events read once
(`sluice.sse.read`). Settlement (`settlement.py`) reads the answer to meter, trace, price
and record it; only `sluice.deployments.http` turns it into headers and bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from sluice import sse
from sluice.pipeline.request import ParsedRequest


@dataclass
class Answer:
    """One request's answer. Exactly one of `whole` and `events` is set."""

    model: str  # the model that answered (a cache hit: the model it was cached for)
    route: str  # "direct", a cascade path, "cache", "budget-downgrade"
    cache: str  # the response cache's verdict: hit, miss or bypass
    whole: dict[str, Any] | None = None  # a JSON answer
    events: AsyncIterator[list[sse.Event]] | None = None  # a stream, one list per chunk
    buffered: bool = False  # the stream existed whole before it was sent (cached, judged)
    similarity: float | None = None  # of a semantic-cache hit
    replica: str | None = None  # the Serve replica that answered
    retries: int = 0  # engine replicas that failed the call before `replica` answered
    scores: dict[str, float] = field(default_factory=dict)  # the cascade's stage scores
    fallback: str | None = None  # why a cascade stage fell back to the large model
    budget: str | None = None  # "soft": the caller's budget is past its soft limit
    context: str | None = None  # what its context overflow became (x-sluice-context)
    compression: str | None = None  # its prompt compressed: `1800->700 tokens`
    selection: str | None = None  # a selection route's choice and why (x-sluice-selection)
    failed_over: tuple[str, ...] = ()  # models of the failover chain that did not answer
    variant: str | None = None  # the answering model's (or route's) variant label
    prompt_variant: str | None = None  # the prompt template version's label

    @property
    def hit(self) -> bool:
        return self.cache == "hit"


async def replayed(events: Iterable[list[sse.Event]]) -> AsyncIterator[list[sse.Event]]:
    """Events that already exist (a cached or judged stream) as the stream they replay."""
    for chunk in events:
        yield chunk


def cached_answer(request: ParsedRequest, text: str, model: str, route: str, cache: str,
                  similarity: float | None) -> Answer:
    """A cache hit: the stored body (the JSON answer, or the SSE text of the stream)."""
    if request.llm.stream:
        return Answer(model, route, cache, events=replayed([sse.read(text, parse_first=True)]),
                      buffered=True, similarity=similarity)
    return Answer(model, route, cache, whole=json.loads(text), similarity=similarity)
