"""One inference request, end to end, in the order every request goes through.

The order, outermost first (the HTTP edge, `sluice.deployments.http`, adds the first two):

1. **request id**: the client's `x-request-id` when it is a sane id, else a new one;
2. **errors**: a SluiceError renders as its status and OpenAI error JSON; anything else is
   a 500 `internal_error` with its traceback logged under the request id;
3. **settlement opened**: the meter starts, the request's span starts (child of the
   client's trace context);
4. **admission**: the key authenticates (a profile key or one of the key store's), tags
   are checked, the budget is asked (401, 400, 429; a soft limit marks the request);
5. **body**: read with its size limit (413) and time limit (408), decoded and validated
   into the engine's typed request (400 names the field; `sluice.control_tokens` makes a
   chat's control-token strings plain text); a key limited to other models gets 403; more
   completion tokens than the models' context is a 400 `context_length_exceeded`; then the
   prompt is counted in the model's tokens and the model's context policy applied
   (`context_gate`: reject with a 400, route to a model that fits, trim the chat, lower
   max_tokens), after a selection route has chosen its model (`selector`: the cheapest
   candidate meeting the request's latency and quality bars), a chat's long context was
   compressed (`compress_stage`) and the prompt template it names (`x-sluice-prompt`) was
   put first (`prompt_stage`, so the counted prompt includes it);
6. **rate limits and budget holds**: the key's and the tenant's requests and tokens per
   minute, one request and its token reservation taken from all of them at once (429 with
   `Retry-After`); then the request's worst-case cost (prompt + max_tokens on every model
   it may run) held against its budgets (429 when spend plus holds reach a limit); here
   rather than in 4 because both need the body;
7. **pipeline**: route, cache, cascade or engine, returning a typed Answer
   (`answering.Pipeline`); a failure here is told to the rollouts of the route and prompt
   versions the request was given (a model's variant's, by the engines);
8. **settlement**: the answer is metered, traced, priced and recorded, and its token
   reservation corrected (`settlement`); a failure anywhere in 4-7 is settled by its
   status, with the stages it paid for;
9. **render**: only now headers, JSON or SSE (the HTTP edge).

Framework-free: the ingress deployment, the unit tests and the benchmarks call `handle`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import nullcontext

from opentelemetry import trace
from opentelemetry.trace import Tracer

from sluice.accounting.accountant import Accountant, Admission
from sluice.accounting.rate_limits import RateLimiter
from sluice.accounting.response_cost import UsagePricer
from sluice.control_tokens import ControlTokens
from sluice.errors import ContextLengthExceeded
from sluice.observability.metrics import Metrics
from sluice.observability.request_meter import RequestMeter
from sluice.observability.tracing import start_span
from sluice.pipeline.answer import Answer
from sluice.pipeline.answering import Pipeline
from sluice.pipeline.compress_stage import CompressStage
from sluice.pipeline.context_gate import ContextGate
from sluice.pipeline.engines import SUBJECT_ATTR
from sluice.pipeline.prompt_stage import PromptStage
from sluice.pipeline.request import Endpoint, ParsedRequest, RequestLimits, parsed
from sluice.pipeline.request_body import decode_json, read_body
from sluice.pipeline.selector import Selector, asked_bars
from sluice.pipeline.settlement import Settled, Settlement
from sluice.rollouts.assignment import subjects
from sluice.rollouts.controller import Rollouts


class RequestHandler:
    def __init__(self, pipeline: Pipeline, accountant: Accountant, pricer: UsagePricer,
                 metrics: Metrics, limits: RequestLimits, max_body_bytes: int,
                 rate_limiter: RateLimiter | None = None, tracer: Tracer | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 body_timeout_s: float | None = None,
                 control_tokens: ControlTokens | None = None,
                 context_gate: ContextGate | None = None,
                 selector: Selector | None = None, rollouts: Rollouts | None = None,
                 compressor: CompressStage | None = None,
                 prompts: PromptStage | None = None) -> None:
        self._pipeline, self._accountant, self._pricer = pipeline, accountant, pricer
        self._metrics, self._limits, self._max_body_bytes = metrics, limits, max_body_bytes
        self._rate_limiter, self._tracer, self._clock = rate_limiter, tracer, clock
        self._body_timeout_s, self._control = body_timeout_s, control_tokens
        self._gate, self._selector = context_gate, selector
        self._rollouts, self._compressor, self._prompts = rollouts, compressor, prompts

    def _check_context(self, request: ParsedRequest) -> None:
        """More completion tokens than any model the request may run has context for is a
        400 here (vLLM would refuse it per engine, and a cascade's small model before its
        large one could answer)."""
        asked, model = request.max_output_tokens, request.llm.model
        if not asked or not self._pipeline.knows(model):
            return
        context = max(m.context_length for m in self._pipeline.models_at_worst(model))
        if asked > context:
            field = ("max_completion_tokens" if request.body.get("max_completion_tokens")
                     else "max_tokens")
            raise ContextLengthExceeded(
                f"'{field}' is {asked}, more than the context length of '{model}' "
                f"({context} tokens, prompt included); ask for fewer tokens.", param=field)

    def _worst_usd(self, request: ParsedRequest) -> float:
        """The most the request can cost: its prompt (bounded by its bytes) and all the
        completion tokens it may ask for (max_tokens x n, else the context's rest), on every
        model it may run."""
        llm = request.llm
        prompt = request.prompt_tokens_bound()
        asked = request.max_output_tokens
        total = 0.0
        for model in self._pipeline.models_at_worst(llm.model):
            out = (asked or max(1, model.context_length - prompt)) * (llm.n or 1)
            total += self._pricer.price({"prompt_tokens": prompt, "completion_tokens": out},
                                        model.name, hit=False).total_usd
        return total

    async def _answer(self, request: ParsedRequest, admission: Admission,
                      settlement: Settlement) -> Answer:
        """Step 7: the pipeline's answer; its failure is told to the rollouts of the route
        and prompt versions the request was given (a 5xx counts against the version)."""
        try:
            return await self._pipeline.answer(request, admission, settlement.spend)
        except Exception as exc:
            if self._rollouts is not None:
                for variant in request.variants:
                    self._rollouts.failed(variant, exc)
            raise

    async def handle(self, endpoint: Endpoint, headers: Mapping[str, str],
                     body: AsyncIterator[bytes], request_id: str) -> Settled:
        """Steps 3-8 above; raises the request's error after settling it."""
        span = start_span(self._tracer, endpoint, headers) if self._tracer else None
        observe = self._selector.observe if self._selector is not None else None
        rollouts = self._rollouts
        meter = RequestMeter(self._metrics, self._clock, observe,
                             rollouts.observe if rollouts is not None else None)
        settlement = Settlement(meter, span,
                                self._accountant, self._pricer, request_id, self._clock)
        try:
            admission = await self._accountant.admit(headers, request_id)
            settlement.admitted(admission)
            with (trace.use_span(span, record_exception=False, set_status_on_exception=False)
                  if span is not None else nullcontext()):
                raw = await read_body(body, headers.get("content-length"),
                                      self._max_body_bytes, self._body_timeout_s)
                request = parsed(endpoint, decode_json(raw), self._limits, request_id,
                                 headers, len(raw), self._control)
                selector = self._selector
                settlement.parsed(request, self._pipeline.knows(request.llm.model)
                                  or (selector is not None and request.llm.model in selector))
                admission.principal.may_use(request.llm.model)
                if rollouts is not None:  # who the request is for a rollout's sticky split
                    sticky, principal = rollouts.settings, admission.principal
                    setattr(request.llm, SUBJECT_ATTR, subjects(
                        request.headers, principal.key_id, principal.tenant, request_id,
                        sticky.sticky_header, sticky.sticky_key))
                asked = asked_bars(request.headers)  # checked on every request (400)
                selection = (selector.choose(request, admission.principal, asked)
                             if selector is not None else None)
                compressed = (await self._compressor.apply(request)
                              if self._compressor is not None else None)
                prompted = self._prompts.apply(request) if self._prompts is not None else None
                if self._gate is None or not self._gate.lowers(request):
                    self._check_context(request)
                gated = (await self._gate.apply(request, admission.principal)
                         if self._gate is not None else None)
                if gated is not None and gated.note:
                    settlement.context = gated.note
                if self._rate_limiter is not None and self._rate_limiter.enabled:
                    llm = request.llm
                    tokens = self._rate_limiter.tokens_of(
                        request.prompt_tokens_guess(),
                        request.max_output_tokens,
                        llm.n or 1)
                    settlement.limited(self._rate_limiter, await self._rate_limiter.reserve(
                        admission.principal, tokens))
                guard = self._accountant.guard
                if guard.applicable(admission.principal):
                    settlement.held(await guard.reserve(
                        admission.principal, self._worst_usd(request), admission.arrived))
                answer = await self._answer(request, admission, settlement)
                if gated is not None:
                    answer.context = gated.note
                if compressed is not None and not answer.hit:  # an engine read it
                    answer.compression = compressed.note
                    settlement.compression = compressed
                    assert self._compressor is not None
                    self._compressor.counted(compressed)
                if selection is not None:
                    answer.selection = selection.reason
                if rollouts is not None and answer.variant is None:  # (a route's version
                    answer.variant = rollouts.label(answer.model)  # named it already)
                if prompted is not None:
                    answer.prompt_variant = prompted.label
            return await settlement.settle(answer)
        except BaseException as exc:
            settlement.failed(exc)  # (a no-op if the answer's outcome already ended)
            if isinstance(exc, Exception):  # an error answer waits for its record too
                await self._accountant.recorded()  # (not a cancelled request: no answer)
            raise
