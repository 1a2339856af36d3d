"""Settle one request from its typed answer: meter, trace, price and record it, once.

Settlement reads the Answer the pipeline returned (which model, route, cache status) and
its body as data (the JSON answer, or the stream's events as `sluice.sse.read` typed them),
never the HTTP response. A whole answer (JSON, or a buffered stream: cached or judged) is
priced and ended before it is sent, so its cost can go in a header; a live stream is watched
as it passes: the first token's time, the token events, the id, the finish reasons and the
usage event, which is priced where it is found (`usage.cost`). The engines are always asked
for a stream's usage event (a ledger needs every answer's tokens); a client that did not ask
for it (`stream_options.include_usage`) does not get it.

A stream that ends without its usage event (the client left: 499; the engine failed
mid-stream: 503) is charged an estimate, marked as such: the engine did that work. A request
that fails before it has an answer is counted by its error's status and still costs the
stages it ran (a cascade's rejected draft).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from sluice import sse
from sluice.accounting.accountant import Accountant, Admission, Savings
from sluice.accounting.budgets import Hold
from sluice.accounting.rate_limits import Quota, RateLimiter, Reservation
from sluice.accounting.response_cost import UsagePricer
from sluice.accounting.stage_spend import StageLog
from sluice.errors import SluiceError
from sluice.observability.outcome import Outcome, Tokens
from sluice.observability.request_meter import RequestMeter
from sluice.observability.tracing import end_span, fail_span, set_request
from sluice.pipeline.answer import Answer
from sluice.pipeline.request import ParsedRequest

CLIENT_GONE = 499  # the client closed the connection before the answer ended


@dataclass
class Settled:
    """An answer with its usage priced, ready to render. Call `end` when its body is done
    (or was never sent): once is settled, later calls do nothing."""

    answer: Answer
    whole: dict[str, Any] | None  # a JSON answer
    events: AsyncIterator[list[sse.Event]] | None  # a live stream, watched as it is sent
    buffered: list[list[sse.Event]] | None  # a stream that existed whole (cached, judged)
    cost_usd: float | None  # known before the body is sent (a whole or buffered answer)
    end: Callable[[bool], None]  # end(gone): gone=True when the client left first
    quota: Quota | None = None  # what the caller's rate limits have left


def _status(exc: BaseException) -> int:
    """499: the client went away (cancelled); anything else unexpected is our bug: 500."""
    if isinstance(exc, SluiceError):
        return exc.status
    return 500 if isinstance(exc, Exception) else CLIENT_GONE


class Settlement:
    """One request's bookkeeping, opened when it arrives."""

    def __init__(self, meter: RequestMeter, span: Span | None, accountant: Accountant,
                 pricer: UsagePricer, request_id: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._meter, self._span, self._accountant = meter, span, accountant
        self._pricer, self._request_id, self._clock = pricer, request_id, clock
        self.spend = StageLog()  # the stages the pipeline ran before the answer
        self._admission: Admission | None = None
        self._request: ParsedRequest | None = None
        self._limiter: RateLimiter | None = None
        self._hold: Hold | None = None
        self._ended = False  # the outcome was settled (by failed() or by the answer's end)
        self._reservation: Reservation | None = None
        self.context = ""  # what the request's context overflow became (context_gate)
        self.compression: Savings | None = None  # its prompt compressed (compress_stage)

    def admitted(self, admission: Admission) -> None:
        self._admission = admission

    def parsed(self, request: ParsedRequest, known_model: bool) -> None:
        """The body is valid; a known model now counts as in flight (an unknown name would
        grow the label set)."""
        self._request = request
        if self._span is not None:
            set_request(self._span, request.endpoint, request.llm)
        if known_model:
            self._meter.routed(request.llm.model)

    def held(self, hold: Hold | None) -> None:
        """The request holds its worst case against its budgets (its record releases it)."""
        self._hold = hold

    def limited(self, limiter: RateLimiter, reservation: Reservation | None) -> None:
        """The request took its share of its rate limits (corrected when it ends)."""
        self._limiter, self._reservation = limiter, reservation

    def failed(self, exc: BaseException) -> None:
        """The request raised before it had an answer."""
        if self._ended:
            return
        self._ended = True
        if self._limiter is not None:  # nothing delivered; stages that ran still count
            self._limiter.settle(self._reservation, sum(
                Tokens.of(s.usage).prompt + Tokens.of(s.usage).completion
                for s in self.spend.stages))
        status = _status(exc)
        self._meter.failed(status)
        if self._span is not None:
            fail_span(self._span, status, str(exc))
        if self._admission is not None:
            spent = self._pricer.price(None, "", hit=False, stages=self.spend.stages)
            self._meter.charged(spent)
            self._accountant.settle(self._admission, self._request_id, self._meter.model,
                                    status, None, spent.total_usd, stages=self.spend.stages,
                                    hold_id=self._hold_id, context=self.context,
                                    compression=self.compression, variants=self._variants)

    async def settle(self, answer: Answer) -> Settled:
        assert self._request is not None and self._admission is not None
        outcome = Outcome(200, answer.model, answer.route, answer.cache, self._meter.started,
                          served_variants=self._variants)
        reading = _Reading(outcome, self._price_for(answer), self._request.client_usage,
                           self._clock)
        live = answer.events is not None and not answer.buffered
        end = _End(reading, self._finish, self._request.estimate if live else None,
                   answer.hit)
        quota = self._reservation.quota if self._reservation is not None else None
        if answer.whole is not None:
            whole = reading.whole(answer.whole)
            end(False)
            await self._accountant.recorded()
            return Settled(answer, whole, None, None, outcome.cost_usd, end, quota)
        assert answer.events is not None
        if answer.buffered:  # it exists whole: read now, so its cost can be a header
            chunks = [reading.see(events) async for events in answer.events]
            outcome.first_token_at = None  # all at once: no first-token time to report
            end(False)
            await self._accountant.recorded()
            return Settled(answer, None, None, chunks, outcome.cost_usd, end, quota)
        return Settled(answer, None, _watched(answer.events, reading, end,
                                              self._accountant.recorded),
                       None, None, end, quota)

    def _price_for(self, answer: Answer) -> Callable[[dict[str, Any] | None], Any]:
        stages = self.spend.stages
        return lambda usage: self._pricer.price(usage, answer.model, hit=answer.hit,
                                                stages=stages)

    def _finish(self, outcome: Outcome) -> None:
        assert self._admission is not None
        self._ended = True
        if self._limiter is not None:  # engine tokens: the answer's (none for a cache
            # hit) and the stages' (a rejected draft, a judge)
            used = [Tokens.of(s.usage) for s in self.spend.stages]
            if outcome.cache != "hit":
                used.append(Tokens.of(outcome.usage))
            self._limiter.settle(self._reservation, sum(t.prompt + t.completion for t in used))
        self._meter.finished(outcome)
        if self._span is not None:
            end_span(self._span, outcome)
        self._accountant.settle(self._admission, self._request_id, self._meter.model,
                                outcome.status, outcome, outcome.cost_usd,
                                stages=self.spend.stages, hold_id=self._hold_id,
                                context=self.context, compression=self.compression)

    @property
    def _variants(self) -> tuple[str, ...]:
        """The route and prompt-template versions the request was given (`ParsedRequest`)."""
        return tuple(self._request.variants) if self._request is not None else ()

    @property
    def _hold_id(self) -> str:
        return self._hold.id if self._hold is not None else ""


class _Reading:
    """An answer's outcome, read from its body as data."""

    def __init__(self, outcome: Outcome, price: Callable[[dict[str, Any] | None], Any],
                 client_usage: bool, clock: Callable[[], float]) -> None:
        self.outcome, self.price = outcome, price
        self._client_usage, self._clock = client_usage, clock

    def whole(self, body: dict[str, Any]) -> dict[str, Any]:
        o = self.outcome
        o.response_id = body.get("id")
        o.finish_reasons = [str(c.get("finish_reason")) for c in body.get("choices") or []
                            if isinstance(c, dict) and c.get("finish_reason")]
        usage = body.get("usage")
        if isinstance(usage, dict):
            o.priced = self.price(usage)
            o.usage = body["usage"] = o.priced.usage
        return body

    def see(self, events: list[sse.Event]) -> list[sse.Event]:
        """One chunk's events: counted, timed, the usage priced (or dropped)."""
        o, kept = self.outcome, []
        for event in events:
            if event.kind == sse.ERROR:
                o.failed = True
            elif event.kind == sse.TOKEN:
                o.token_events += 1
                if o.first_token_at is None:
                    o.first_token_at = self._clock()
            payload = event.payload
            if payload is not None and event.kind != sse.ERROR:
                if o.response_id is None and payload.get("id"):
                    o.response_id = str(payload["id"])
                o.finish_reasons += event.finish_reasons
                if isinstance(payload.get("usage"), dict):
                    o.priced = self.price(payload["usage"])
                    o.usage = payload["usage"] = o.priced.usage
                    if event.kind == sse.USAGE and not self._client_usage:
                        continue
                    event = sse.Event(sse.encode(payload), event.kind, payload)
            kept.append(event)
        return kept


class _End:
    """Ends an outcome exactly once, however its answer stopped."""

    def __init__(self, reading: _Reading, finish: Callable[[Outcome], None],
                 estimate: Callable[[int], dict[str, Any]] | None, hit: bool) -> None:
        self._reading, self._finish, self._estimate, self._hit = reading, finish, estimate, hit
        self.done = False

    def __call__(self, gone: bool) -> None:
        if self.done:
            return
        self.done = True
        r = self._reading
        o = r.outcome
        if o.usage is None:
            if gone:
                o.status = CLIENT_GONE
            elif o.failed:
                o.status = 503
            if self._estimate is not None and not self._hit:  # a live stream cut short
                o.estimated = True
                o.priced = r.price(self._estimate(o.token_events))
                o.usage = o.priced.usage
        o.ended = r._clock()
        if o.priced is None:  # no usage (a failed answer) still costs its earlier stages
            o.priced = r.price(None)
        self._finish(o)


async def _watched(events: AsyncIterator[list[sse.Event]], reading: _Reading, end: _End,
                   recorded: Callable[[], Awaitable[bool]]
                   ) -> AsyncIterator[list[sse.Event]]:
    """The stream as it passes, read; it ends (and is recorded) before its [DONE] is sent,
    so a client that saw the whole answer saw one the ledger holds."""
    gone = True  # until the stream is read to its end
    try:
        async for chunk in events:
            kept = reading.see(chunk)
            last = next((i for i, e in enumerate(kept) if e.kind == sse.END), None)
            if last is not None:
                if kept[:last]:
                    yield kept[:last]
                end(False)
                await recorded()
                kept = kept[last:]
            if kept:
                yield kept
        gone = False
    finally:
        end(gone)
