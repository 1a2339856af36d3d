"""Call an LLMServer deployment through its handle and read what it yields.

The LLMServer yields, for a streaming request, lists of ready SSE strings; for a non-streaming
one, a single response object; for an engine-side rejection, an ErrorResponse (possibly inside
the first list). The first item is awaited before any byte goes to the client, so every error
the engine knows up front becomes a proper status code; an error after the stream started is
sent as an SSE error event (the status line is already out). A stream that goes quiet for
longer than its model's stall timeout ends the same way, and a stream its reader abandons
(the client left) cancels the engine request, so the engine stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind, Tracer
from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions
from ray.serve.handle import DeploymentHandle

from sluice import sse
from sluice.errors import SluiceError, Unavailable, from_engine_error
from sluice.observability.tracing import OPERATIONS
from sluice.pipeline.failover import Breaker

log = logging.getLogger(__name__)

# Set on the engine request for a retry: the replicas that just failed it, which Sluice's
# replica router ranks last (an extra field; vLLM's request models ignore extras)
AVOID_ATTR = "sluice_avoid_replicas"
# Set on the request by the handler: who the request is for a rollout's sticky split
# (`sluice.rollouts.assignment.subject`)
SUBJECT_ATTR = "sluice_subject"
_RETRIABLE = (
    serve_exceptions.BackPressureError,
    serve_exceptions.DeploymentUnavailableError,
    # the router chose a replica the controller removed before the request reached it
    serve_exceptions.ReplicaUnavailableError,
    ray_exceptions.RayActorError,
    ray_exceptions.ActorUnavailableError,
    ray_exceptions.RayTaskError,
)


def retriable(exc: BaseException) -> bool:
    """A failure another replica may not have: Serve's and Ray's (a replica gone, an actor
    dead, the deployment unavailable), or vLLM's EngineDeadError, which an engine replica
    whose engine core died raises (Serve passes it through as itself) for every request
    routed there until the replica is replaced. Matched by name and module, so the ingress
    needs no vLLM import."""
    if isinstance(exc, _RETRIABLE):
        return True
    return any(c.__name__ == "EngineDeadError" and c.__module__.startswith("vllm")
               for c in type(exc).__mro__)


def _as_error(item: Any, prompt_field: str) -> SluiceError | None:
    """The engine's up-front rejection, whichever form it arrives in."""
    if isinstance(item, list) and item:
        item = item[0]
    e = getattr(item, "error", None)
    if e is not None and hasattr(e, "message") and hasattr(e, "code"):
        # Ray Serve LLM's ErrorResponse (its engine yields the internal base class of the
        # public one, so match on shape rather than on class).
        return from_engine_error(int(e.code), e.message, e.type, getattr(e, "param", None),
                                 prompt_field)
    if isinstance(item, str) and sse.is_error(item):
        # A streaming request the engine rejected before generating: one SSE error event.
        e = (sse.payload(item) or {}).get("error")
        try:
            return from_engine_error(int(e.get("code") or 500), e["message"], e.get("type"),
                                     e.get("param"), prompt_field)
        except (AttributeError, ValueError, KeyError, TypeError):
            return None
    return None


def _unavailable(model: str, exc: BaseException) -> Unavailable:
    log.warning("model %s failed a request: %r", model, exc)
    return Unavailable(f"Model '{model}' is not available right now ({type(exc).__name__}); "
                       "retry shortly.")


def overloaded(model: str, exc: serve_exceptions.BackPressureError) -> Unavailable:
    retry = getattr(exc, "_retry_after_s", None)
    return Unavailable(f"Model '{model}' is at capacity (its queue is full); retry after "
                       "the Retry-After seconds.", code="model_overloaded",
                       retry_after_s=max(1, int(retry or 1)))


def stalled(model: str, stall_timeout_s: float) -> Unavailable:
    return Unavailable(f"Model '{model}' stopped producing output for {stall_timeout_s:g} s "
                       "mid-answer; retry.", code="engine_stalled")


@dataclass(frozen=True)
class Timeouts:
    """How long a model's engine may take: to its first output (then 503, retried on
    another replica where one is left), and between two outputs of a stream (then the
    stream ends with an error event). None: no stall bound."""

    first_item_s: float
    stall_s: float | None = None


class EngineStream:
    """One in-flight call: the first item (already checked for errors) and the rest."""

    def __init__(self, model: str, first: Any, rest: AsyncIterator[Any],
                 replica: str | None = None, retries: int = 0,
                 stall_timeout_s: float | None = None) -> None:
        self.model = model
        self.first = first
        self._rest = rest
        self.replica = replica  # the Serve replica that answers
        self.retries = retries  # replicas that failed the call before this one answered
        self.failed_over: tuple[str, ...] = ()  # models of the chain before this one
        self._stall_s = stall_timeout_s

    async def _next(self) -> Any:
        if self._stall_s is None:
            return await self._rest.__anext__()
        return await asyncio.wait_for(self._rest.__anext__(), timeout=self._stall_s)

    def _abort(self) -> None:
        """Cancel the engine request (Serve cancels the replica's task; vLLM aborts)."""
        cancel = getattr(self._rest, "cancel", None)
        if cancel is not None:
            cancel()

    def whole(self) -> dict[str, Any]:
        """A non-streamed answer as JSON-ready data (the engine's typed response, once)."""
        return self.first.model_dump(mode="json")  # type: ignore[no-any-return]

    def _named(self, event: sse.Event) -> sse.Event:
        """vLLM's own error event for an engine that died mid-stream (`code` 500,
        "EngineCore encountered an issue") as what it is to a client: Sluice's retriable
        `engine_unavailable`, the same event a replica lost mid-stream gives."""
        error = (event.payload or {}).get("error") if event.kind == sse.ERROR else None
        if not isinstance(error, dict):
            return event
        try:
            code = int(error.get("code") or 500)
        except (TypeError, ValueError):
            return event
        mapped = from_engine_error(code, str(error.get("message") or ""), error.get("type"))
        if not isinstance(mapped, Unavailable) or mapped.code != "engine_unavailable":
            return event
        log.warning("model %s: replica %s's engine failed mid-stream: %s", self.model,
                    self.replica, str(error.get("message"))[:200])
        unavailable = Unavailable(f"Model '{self.model}' stopped mid-stream (its engine "
                                  "failed); retry the request.")
        return sse.read(sse.encode(unavailable.body()))[0]

    async def events(self) -> AsyncIterator[list[sse.Event]]:
        """The stream's events, one list per engine item, read once (sluice.sse.read). A
        failure mid-stream ends it with an OpenAI-style error event; every stream ends with
        [DONE]. Left unfinished by its reader (the client went away: the generator is
        closed or cancelled), it cancels the engine request."""
        done, named, ended = False, False, False
        try:
            item: Any = self.first
            while True:
                events = sse.read("".join(item) if isinstance(item, list) else str(item),
                                  parse_first=not named)
                events = [self._named(e) for e in events]
                named = named or any(e.payload is not None for e in events)
                done = done or any(e.kind == sse.END for e in events)
                yield events
                item = await self._next()
        except StopAsyncIteration:
            ended = True
        except TimeoutError:
            ended = True
            self._abort()
            log.warning("model %s: replica %s stalled for %.1f s mid-stream", self.model,
                        self.replica, self._stall_s)
            yield sse.read(sse.encode(stalled(self.model, self._stall_s or 0).body()))
        except Exception as exc:
            if not retriable(exc):
                raise
            ended = True
            yield sse.read(sse.encode(_unavailable(self.model, exc).body()))
        finally:
            if not ended:
                self._abort()
        if not done:
            yield sse.read(sse.DONE)


class Engines:
    """The models, called by name: a model Sluice runs through its deployment (one traced
    engine call, with its own engine request id under the client's, retried on another
    replica before its first item: `call_engine`), a provider's over HTTP
    (`sluice.pipeline.providers`). A call that fails before its first item with a retriable
    error goes to the next model of the model's failover chain (`sluice.pipeline.failover`);
    the stream names the models it passed (`failed_over`)."""

    def __init__(self, handles: Mapping[str, DeploymentHandle],
                 timeouts: Timeouts | Mapping[str, Timeouts], attempts: int, tracer: Tracer,
                 on_retry: Callable[[str], None] | None = None,
                 providers: Mapping[str, Any] | None = None,
                 failover: Mapping[str, Sequence[str]] | None = None,
                 breaker: Breaker | None = None,
                 on_failover: Callable[[str, str], None] | None = None,
                 rollouts: Any = None) -> None:
        """rollouts: `sluice.rollouts.controller.Rollouts`, which picks the variant that
        answers a model under rollout and is told of the variants' failures."""
        self._streams = {name: h.options(stream=True) for name, h in handles.items()}
        self._timeouts = ({name: timeouts for name in handles}
                          if isinstance(timeouts, Timeouts) else dict(timeouts))
        self._attempts, self._tracer = attempts, tracer
        self._on_retry = on_retry or (lambda _model: None)  # one call per retry (a metric)
        self._providers = dict(providers or {})
        self._failover = {name: tuple(chain) for name, chain in (failover or {}).items()}
        self.breaker = breaker or Breaker()
        self._on_failover = on_failover or (lambda _model, _to: None)  # (model, answerer)
        self.rollouts = rollouts

    def __contains__(self, model: object) -> bool:
        return model in self._streams or model in self._providers

    async def call(self, model: str, endpoint: str, request: Any) -> EngineStream:
        """The model's answer: from the variant its rollout picks for this request, if it
        has one, else from the model, or the next of its failover chain."""
        if self.rollouts is not None:
            variant = self.rollouts.route(model, getattr(request, SUBJECT_ATTR, None) or "")
            if variant in self:
                return await self.call_chain(variant, endpoint, request, failover_of=model)
        return await self.call_chain(model, endpoint, request)

    async def call_chain(self, model: str, endpoint: str, request: Any,
                         failover_of: str | None = None) -> EngineStream:
        """This model (no rollout asked), then its failover chain's (`failover_of`'s)."""
        declared = [model, *self._failover.get(failover_of or model, ())]
        chain = self.breaker.order(declared)  # those put aside last
        failed: list[str] = []
        for i, backend in enumerate(chain):
            try:
                stream = await self._call_one(backend, endpoint, request)
            except SluiceError as exc:
                if self.rollouts is not None:
                    self.rollouts.failed(backend, exc)
                if not isinstance(exc, Unavailable):
                    raise
                self.breaker.failed(backend, _aside_s(exc))
                failed.append(backend)
                if i + 1 == len(chain):
                    raise
                log.warning("model %s: %s failed before answering (%s); failing over to %s",
                            model, backend, exc.code, chain[i + 1])
                continue
            self.breaker.succeeded(backend)
            if backend != model:
                self._on_failover(model, backend)  # another model of the chain answered
            # the chain's models that did not answer: failed now, or ahead of it but aside
            ahead = declared[:declared.index(backend)]
            stream.failed_over = tuple(m for m in declared if m in failed or m in ahead)
            return stream
        raise AssertionError("a chain has at least the model itself")

    def _span(self, model: str, endpoint: str, system: str, asked: str, streamed: bool
              ) -> Any:
        operation = OPERATIONS.get(endpoint, endpoint)
        return self._tracer.start_as_current_span(
            f"{operation} {model}", kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.provider.name": system,
                        "gen_ai.request.model": asked, "sluice.stream": streamed})

    async def _call_one(self, model: str, endpoint: str, request: Any) -> EngineStream:
        provider = self._providers.get(model)
        if provider is not None:
            with self._span(model, endpoint, provider.endpoint.api, provider.endpoint.model,
                            bool(request.stream)) as span:
                stream = await provider.call(endpoint, request)
                span.set_attribute("sluice.replica", stream.replica or "")
                return stream  # type: ignore[no-any-return]
        engine_request = request.model_copy(update={
            "model": model, "request_id": f"{request.request_id}.{uuid.uuid4().hex[:8]}"})
        with self._span(model, endpoint, "vllm", model, bool(engine_request.stream)) as span:
            timeouts = self._timeouts[model]
            stream = await call_engine(self._streams[model], endpoint, engine_request, model,
                                       timeouts.first_item_s, self._attempts,
                                       stall_timeout_s=timeouts.stall_s)
            span.set_attributes({"sluice.replica": stream.replica or "",
                                 "sluice.retries": stream.retries})
            for _ in range(stream.retries):
                self._on_retry(model)
        return stream

    async def providers_ready(self, timeout_s: float = 3.0) -> dict[str, str]:
        """Each hosted model's state for /readyz: `ready` (its API answered), `aside` (the
        breaker put it aside: its chain answers for it) or `unavailable (why)`."""
        names = list(self._providers)
        probes = await asyncio.gather(*(self._providers[n].ready(timeout_s) for n in names))
        return {n: "aside" if self.breaker.aside(n) else probe
                for n, probe in zip(names, probes)}

    async def close(self) -> None:
        """Close the providers' connection pools (the ingress is shutting down)."""
        await asyncio.gather(*(p.close() for p in self._providers.values()),
                             return_exceptions=True)


def _aside_s(exc: Unavailable) -> float | None:
    """How long a provider's 429 asked to be left alone (its Retry-After)."""
    if exc.code != "provider_rate_limited":
        return None
    try:
        return float(exc.headers.get("Retry-After", "1"))
    except ValueError:
        return None


async def call_engine(
    handle: DeploymentHandle, method: str, request: Any, model: str, first_item_timeout_s: float,
    attempts: int = 1, backoff_s: float = 0.05, stall_timeout_s: float | None = None,
) -> EngineStream:
    """Start the call and wait (bounded) for its first item; raise SluiceError on failure.

    The replica is chosen by the deployment's request router first and the call dispatched to
    it (Serve's choose_replica/dispatch), so the response can name the replica that served it.
    A replica that fails before the first item (its engine died, it went away, it is
    overloaded) is retried on another, up to `attempts` calls in all and within the same
    first-item deadline: nothing has reached the client yet, so a retry is invisible to it.
    A timeout is not retried (a slow engine given more work gets slower). A caller cancelled
    while it waits (the client left) cancels the engine request.
    """
    bound = getattr(handle, method)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + first_item_timeout_s
    failed: list[str] = []
    last: BaseException | None = None
    for attempt in range(max(1, attempts)):
        if failed:
            setattr(request, AVOID_ATTR, list(failed))
        started: list[Any] = []
        chosen: list[str] = []

        async def start() -> tuple[Any, str]:
            async with bound.choose_replica(request) as selection:
                chosen.append(selection.replica_id)
                gen = bound.dispatch(selection, request)
                started.append(gen)
                return await gen.__anext__(), selection.replica_id

        try:
            first, replica = await asyncio.wait_for(start(), timeout=deadline - loop.time())
        except StopAsyncIteration:
            raise _unavailable(model, RuntimeError("engine returned nothing")) from None
        except asyncio.CancelledError:
            for gen in started:
                gen.cancel()
            raise
        except TimeoutError:
            for gen in started:
                gen.cancel()
            raise Unavailable(
                f"Model '{model}' did not start answering within {first_item_timeout_s:.0f} s."
            ) from None
        except serve_exceptions.BackPressureError as exc:
            # this ingress's queue for the model is full (every replica holds its
            # max_ongoing_requests): shed now; another replica would not be chosen sooner
            raise overloaded(model, exc) from None
        except Exception as exc:
            if not retriable(exc):
                raise
            last = exc
            failed += chosen
            log.warning("model %s: replica %s failed before answering (%r); attempt %d/%d",
                        model, chosen[0] if chosen else "?", exc, attempt + 1, attempts)
            await asyncio.sleep(min(backoff_s * 2 ** attempt, max(0.0, deadline - loop.time())))
            continue
        error = _as_error(first, "messages" if method == "chat" else "prompt")
        if isinstance(error, Unavailable) and attempt + 1 < attempts:
            last = error  # the engine itself said "not now": another replica may answer
            failed.append(replica)
            continue
        if error is not None:
            raise error
        return EngineStream(model, first, started[0], replica, retries=attempt,
                            stall_timeout_s=stall_timeout_s)
    if isinstance(last, SluiceError):
        raise last
    raise _unavailable(model, last or RuntimeError("no attempt made")) from None
