"""Build the pipeline and its collaborators from one validated PlatformConfig.

The ingress deployment calls this with Serve's deployment handles; a benchmark or a test
can call it with stand-ins of the same shape. Every collaborator is passed in, none is
global: the engines, the answer cache, the accountant, the metrics and the tracer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from sluice.accounting.accountant import Accountant
from sluice.accounting.key_admin import KeyAdmin
from sluice.accounting.rate_limits import RateLimiter
from sluice.accounting.response_cost import UsagePricer
from sluice.cache_tier.redis_target import async_client
from sluice.control_tokens import control_tokens_of
from sluice.observability.metrics import Metrics
from sluice.observability.tracing import tracer_for
from sluice.pipeline.answer_cache import AnswerCache
from sluice.pipeline.answering import Pipeline
from sluice.pipeline.background import Background
from sluice.pipeline.cascade_runner import CascadeRunner
from sluice.pipeline.compress_stage import CompressStage
from sluice.pipeline.context_gate import ContextGate
from sluice.pipeline.engines import Engines, Timeouts
from sluice.pipeline.failover import Breaker
from sluice.pipeline.handler import RequestHandler
from sluice.pipeline.prompt_stage import PromptStage
from sluice.pipeline.providers import provider_engines
from sluice.pipeline.request import RequestLimits
from sluice.pipeline.routes import build_runners, lazy_embedder
from sluice.pipeline.selector import Selector
from sluice.pipeline.token_counter import TokenCounter
from sluice.rollouts.controller import EVENTS, Rollouts
from sluice.rollouts.report import ShadowPair
from sluice.rollouts.state import Rollout
from sluice.rollouts.store import RolloutStore
from sluice.rollouts.targets import always_served, versions
from sluice.router.quality import load as load_quality
from sluice.router.selection import ObservedLatency
from sluice.router.static import StaticRouter
from sluice.schema.platform import PlatformConfig


@dataclass
class Platform:
    """What the ingress serves from: the request handler and what its other routes read."""

    handler: RequestHandler
    router: StaticRouter
    runners: dict[str, CascadeRunner]
    cache: AnswerCache
    accountant: Accountant
    rate_limiter: RateLimiter
    metrics: Metrics
    background: Background
    key_admin: KeyAdmin
    engines: Engines
    rollouts: Rollouts

    def route_snapshots(self) -> dict[str, dict[str, Any]]:
        return {name: r.policy.snapshot() for name, r in self.runners.items()}


def engine_timeouts(config: PlatformConfig, models: Mapping[str, Any]) -> dict[str, Timeouts]:
    """Each model's first-output and stall bounds: its deployment's, else the ingress's."""
    ingress, deployed = config.profile.ingress, config.profile.models
    out: dict[str, Timeouts] = {}
    for name in models:
        d = deployed.get(name)
        first = d.first_token_timeout_s if d and d.first_token_timeout_s else None
        stall = d.stall_timeout_s if d and d.stall_timeout_s else None
        out[name] = Timeouts(first or ingress.first_token_timeout_s,
                             stall or ingress.stall_timeout_s)
    return out


def on_compared(metrics: Metrics) -> Callable[[Rollout, ShadowPair | None], None]:
    """A compared pair (or a sample skipped at the bound): the shadow's metrics."""

    def count(r: Rollout, pair: ShadowPair | None) -> None:
        if pair is None:
            result = "skipped"
        elif pair.candidate_error:
            result = "candidate_error"
        else:
            result = "agreed" if pair.agreed else "disagreed"
        metrics.compared_pairs.labels(r.model, r.candidate, result).inc()
        if pair is not None and not pair.candidate_error and pair.baseline_s > 0:
            metrics.compared_latency_ratio.labels(r.model, r.candidate).observe(
                pair.candidate_s / pair.baseline_s)

    return count


def rollout_hooks(metrics: Metrics, alert: Callable[[dict[str, Any]], None]
                  ) -> tuple[Callable[[Rollout, str], None], Callable[[Rollout], None]]:
    """What a rollout's decisions (on_event) and every read of its state (on_read) do: the
    metrics, and the webhook for the decisions that end one."""

    def on_read(r: Rollout) -> None:
        metrics.rollout_share.labels(r.model, r.candidate).set(r.share())
        for event in EVENTS:  # exported at 0 first, so an alert's increase() sees the 1
            metrics.rollout_events.labels(r.model, event)

    def on_event(r: Rollout, event: str) -> None:
        metrics.rollout_events.labels(r.model, event).inc()
        if event in ("rolled_back", "promoted", "aborted"):
            alert({"type": f"rollout_{event}", "model": r.model, "rollout": r.id,
                   "candidate": r.candidate, "baseline": r.baseline, "reason": r.reason,
                   "gates": [g.as_dict() for g in (r.canary.gates if r.canary else ())]})

    return on_event, on_read


def rollouts_for(config: PlatformConfig, deployed: Iterable[str], redis_url: str | None,
                 metrics: Metrics, alert: Callable[[dict[str, Any]], None]) -> Rollouts:
    """The ingress's view of the rollouts (their state is in the shared Redis)."""
    settings = config.profile.rollouts
    # never on a request's path (that reads the state in memory): a generous bound
    store = (RolloutStore(async_client(redis_url, max(5.0, settings.poll_s)))
             if redis_url else None)

    on_event, on_read = rollout_hooks(metrics, alert)
    # models, cascade routes and prompt templates, with their versions (rollouts.targets)
    return Rollouts(settings, store, versions(config), set(deployed) | always_served(config),
                    on_event=on_event, on_read=on_read,
                    on_compared=on_compared(metrics))


def assemble(config: PlatformConfig, handles: Mapping[str, Any], redis_url: str | None
             ) -> Platform:
    profile, ingress = config.profile, config.profile.ingress
    background = Background()
    tracer = tracer_for(profile.tracing)
    spans = tracer or trace.NoOpTracer()  # the request's child spans
    embedder = lazy_embedder()
    cache = AnswerCache(profile.response_cache, profile.semantic_cache, redis_url, embedder,
                        background.spawn, spans)
    runners: dict[str, CascadeRunner] = {}  # (filled below; the metrics read it when scraped)
    metrics = Metrics(caches=cache.counters,
                      routes=lambda: {n: r.policy.snapshot() for n, r in runners.items()})
    engines = Engines(handles, engine_timeouts(config, handles), ingress.engine_attempts, spans,
                      on_retry=lambda model: metrics.retries.labels(model).inc(),
                      providers=provider_engines(config.catalog.models),
                      failover={m.name: m.failover for m in config.catalog.models},
                      breaker=Breaker(ingress.failover_threshold, ingress.failover_cooldown_s),
                      on_failover=lambda model, to: metrics.failovers.labels(model, to).inc())
    runners.update(build_runners(config, engines, background.spawn, embedder, tracer=spans))
    accountant = Accountant(profile.accounting, redis_url, background.spawn, metrics)

    def alert(event: dict[str, Any]) -> None:
        if accountant.notifier is not None:
            background.spawn(accountant.notifier.send(event))

    rollouts = rollouts_for(config, list(handles) + [m.name for m in config.catalog.models
                                                     if not m.local],
                            redis_url, metrics, alert)
    engines.rollouts = rollouts
    routes = config.routing.routes if config.routing else ()
    selections = config.routing.selections if config.routing else ()
    router = StaticRouter(config.catalog, ingress.auto_route, routes, selections)
    rate_limiter = RateLimiter(profile.accounting.rate_limits, redis_url, background.spawn,
                               replicas=ingress.num_replicas,
                               key_limits=accountant.keys is not None)
    pipeline = Pipeline(router, runners, engines, cache, accountant.guard, spans,
                        spawn=background.spawn, rollouts=rollouts)
    pricer = UsagePricer({m.name: m.pricing for m in config.catalog.models})
    limits = RequestLimits(max_n=ingress.max_n, max_tokens=ingress.max_tokens_limit,
                           max_logprobs=ingress.max_logprobs,
                           max_stop_chars=ingress.max_stop_chars,
                           max_logit_bias=ingress.max_logit_bias)
    control = control_tokens_of(config.model_source(m) for m in config.catalog.local)
    # a provider's model is not counted here (its tokenizer is the provider's): it decides
    counter = TokenCounter({m.name: config.model_source(m) for m in config.catalog.local})

    def price(model: str, prompt: int, completion: int) -> float:
        return pricer.price({"prompt_tokens": prompt, "completion_tokens": completion},
                            model, hit=False).total_usd

    def overflowed(model: str, policy: str, outcome: str, tenant: str) -> None:
        metrics.context_overflows.labels(model, policy, outcome, tenant).inc()

    gate = ContextGate(profile.context, router, counter, price, overflowed)

    def compressed(model: str, method: str, saved: int) -> None:
        metrics.compressed.labels(model, method).inc()
        metrics.compression_saved_tokens.labels(model).inc(saved)

    compressor = CompressStage(profile.compression, router, counter, embedder, price,
                               compressed)
    selector = None
    if selections:
        assert config.routing is not None
        quality = {s.name: load_quality(config.routing.artifact_path(s.quality),
                                        s.quality.sha256)
                   for s in selections if s.quality is not None}
        selector = Selector(selections, quality, price,
                            ObservedLatency(max(s.window_s for s in selections)))
    handler = RequestHandler(pipeline, accountant, pricer, metrics, limits,
                             ingress.max_body_bytes, rate_limiter, tracer,
                             body_timeout_s=ingress.body_timeout_s, control_tokens=control,
                             context_gate=gate, selector=selector, rollouts=rollouts,
                             compressor=compressor,
                             prompts=PromptStage(profile.prompts, rollouts))
    return Platform(handler, router, runners, cache, accountant, rate_limiter, metrics,
                    background, KeyAdmin(accountant.keys), engines, rollouts)
