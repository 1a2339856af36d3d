"""Multi-tenant shared-prefix workload: Sluice's prefix-affinity router against Ray Serve's
default power-of-two-choices router, in one run on one machine.

One stack serves the same model (the `large` demo model) as two deployments of three
replicas each: `affinity` (Sluice's router) and `p2c` (Serve's default). Each replica's KV
cache is capped (`num_gpu_blocks_override`) to hold about five of the twelve tenants'
prefixes: what a replica can keep is the scarce resource prefix routing is about. The KV
tier is off, so a prefix is reused only where it was computed.

Workload: `--tenants` groups, each with a ~1k-token document as the system message, and
short unique questions; Poisson arrivals at `--rate` req/s, tenants drawn uniformly. Phases
alternate p2c, affinity, p2c, affinity (machine drift hits both), each with fresh documents,
a warm-up that is not counted, then the measured window. Every request streams; TTFT is
the first content chunk; the prefix-cache hit rate is cached prompt tokens / prompt tokens
(vLLM's `usage.prompt_tokens_details.cached_tokens`).

    python -m loadtests.prefix_routing_bench --out bench-results/prefix-routing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("p2c", "affinity")
WORDS = ["ledger", "harbour", "lantern", "orchard", "quarry", "meadow", "signal", "river",
         "stone", "bridge", "candle", "furnace", "willow", "anchor", "copper", "thistle"]


def write_config(tmp: Path, replicas: int, kv_blocks: int) -> Path:
    """A catalog of two names for one model, and a profile deploying each with its router."""
    source = str(ROOT / "models/demo/large")
    catalog = {"models": [
        {"name": "affinity", "source": source, "tier": "small", "context_length": 2048,
         "demo": True},
        {"name": "p2c", "source": source, "tier": "large", "context_length": 2048,
         "demo": True}]}
    (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    engine = {"num_gpu_blocks_override": kv_blocks}
    profile.update(
        name="prefix-routing-bench", catalog=str(tmp / "catalog.yaml"), routing=None,
        ingress={"host": "127.0.0.1", "port": 8795}, dashboard={"enabled": False},
        response_cache={"enabled": False}, semantic_cache={"enabled": False},
        models={
            "affinity": {"min_replicas": replicas, "max_replicas": replicas,
                         "engine_kwargs": engine,
                         "replica_routing": {"policy": "prefix_affinity"}},
            "p2c": {"min_replicas": replicas, "max_replicas": replicas,
                    "engine_kwargs": engine, "replica_routing": {"policy": "power_of_two"}}})
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return tmp / "profile.yaml"


def documents(rng: random.Random, tenants: int, words: int) -> list[str]:
    return [f"Tenant {uuid.uuid4().hex[:8]} handbook. " + " ".join(
        f"{rng.choice(WORDS)}{rng.randrange(100)}" for _ in range(words))
        for _ in range(tenants)]


async def one_request(client: httpx.AsyncClient, model: str, document: str, question: str,
                      max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": document},
                         {"role": "user", "content": question}]}
    start = time.perf_counter()
    out: dict[str, Any] = {"ok": False, "ttft_s": None, "prompt_tokens": 0, "cached": 0}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers={"cache-control": "no-store"}) as resp:
            out["replica"] = resp.headers.get("x-sluice-replica")
            if resp.status_code != 200:
                await resp.aread()
                return out | {"status": resp.status_code}
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                choices = event.get("choices") or []
                # the first event after the role-only opener: the engine's first token (a
                # random-weight model's tokens may decode to "", so content can be empty)
                if choices and "role" not in choices[0].get("delta", {}) \
                        and out["ttft_s"] is None:
                    out["ttft_s"] = time.perf_counter() - start
                usage = event.get("usage")
                if usage:
                    out["prompt_tokens"] = usage["prompt_tokens"]
                    out["cached"] = (usage.get("prompt_tokens_details") or {}).get(
                        "cached_tokens") or 0
                    out["output_tokens"] = usage["completion_tokens"]
        out["ok"] = out["ttft_s"] is not None
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)
    out["e2e_s"] = time.perf_counter() - start
    return out


async def phase(client: httpx.AsyncClient, arm: str, args: argparse.Namespace,
                seed: int) -> list[dict[str, Any]]:
    """Open-loop Poisson arrivals for warm-up + measured window; returns measured requests."""
    rng = random.Random(seed)
    docs = documents(rng, args.tenants, args.doc_words)
    tasks: list[tuple[bool, asyncio.Task[dict[str, Any]]]] = []
    t0 = time.perf_counter()
    end = args.warmup_s + args.measure_s
    n = 0
    while (now := time.perf_counter() - t0) < end:
        tenant = rng.randrange(args.tenants)
        question = f"Question {n} from user {rng.randrange(10**6)}: what does item {n} mean?"
        task = asyncio.create_task(one_request(client, arm, docs[tenant], question,
                                               args.max_tokens))
        tasks.append((now >= args.warmup_s, task))
        n += 1
        await asyncio.sleep(rng.expovariate(args.rate))
    done = await asyncio.wait_for(asyncio.gather(*(t for _, t in tasks)), timeout=600)
    measured = [r for (counted, _), r in zip(tasks, done, strict=True) if counted]
    print(f"[prefix-bench] {arm}: {len(done)} sent, {len(measured)} measured, "
          f"{summary(measured, args.measure_s)}", flush=True)
    return measured


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(
        values) > 1 else (values[0] if values else float("nan"))


def summary(rows: list[dict[str, Any]], window_s: float) -> dict[str, float]:
    ok = [r for r in rows if r["ok"]]
    ttfts = [r["ttft_s"] for r in ok]
    prompt = sum(r["prompt_tokens"] for r in ok)
    return {
        "requests": len(rows), "failed": len(rows) - len(ok),
        "hit_rate": round(sum(r["cached"] for r in ok) / prompt, 4) if prompt else 0.0,
        "ttft_p50_s": round(_pct(ttfts, 50), 4), "ttft_p95_s": round(_pct(ttfts, 95), 4),
        "throughput_rps": round(len(ok) / window_s, 3),
        "output_tok_s": round(sum(r.get("output_tokens", 0) for r in ok) / window_s, 2),
        "prompt_tokens_mean": round(prompt / len(ok), 1) if ok else 0.0,
    }


def plot(results: dict[str, Any], rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in ARMS:
        ttfts = sorted(r["ttft_s"] for r in rows[arm] if r["ok"])
        left.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))],
                  label=f"{arm} (p50 {results[arm]['ttft_p50_s']:.2f} s)")
    left.set(xlabel="TTFT (s)", ylabel="share of requests", title="TTFT, measured windows")
    left.legend()
    hits = [results[a]["hit_rate"] * 100 for a in ARMS]
    right.bar(ARMS, hits, color=["tab:blue", "tab:orange"])
    right.set(ylabel="prefix-cache hit rate (%)", ylim=(0, 100),
              title="cached prompt tokens / prompt tokens")
    for i, h in enumerate(hits):
        right.text(i, h + 2, f"{h:.0f}%", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(results: dict[str, Any]) -> str:
    lines = [("| router | requests | failed | prefix-cache hit rate | TTFT p50 | TTFT p95 | "
              "throughput |"), "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        r = results[arm]
        lines.append(f"| {arm} | {r['requests']} | {r['failed']} | {r['hit_rate']:.1%} | "
                     f"{r['ttft_p50_s']:.3f} s | {r['ttft_p95_s']:.3f} s | "
                     f"{r['throughput_rps']:.2f} req/s |")
    ratio = results["ratios"]
    lines.append(f"\nTTFT p50 affinity / p2c: **{ratio['ttft_p50']:.2f}×**; "
                 f"p95: {ratio['ttft_p95']:.2f}×")
    return "\n".join(lines)


async def drive(base_url: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        for rep in range(args.rounds):
            for i, arm in enumerate(ARMS):
                print(f"[prefix-bench] round {rep + 1}/{args.rounds}: {arm} "
                      f"({args.warmup_s:.0f} s warm-up + {args.measure_s:.0f} s)", flush=True)
                rows[arm] += await phase(client, arm, args, seed=1000 * rep + i)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/prefix-routing")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kv-blocks", type=int, default=48,
                        help="KV blocks (128 tokens) per replica")
    parser.add_argument("--tenants", type=int, default=12)
    parser.add_argument("--doc-words", type=int, default=215, help="~1k tokens")
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per second")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--warmup-s", type=float, default=30)
    parser.add_argument("--measure-s", type=float, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

    from sluice.deployments.local_stack import LocalStack
    from sluice.schema.loading import load_platform_config

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sluice-prefix-bench-") as tmp:
        config = load_platform_config(write_config(Path(tmp), args.replicas, args.kv_blocks),
                                      root=ROOT)
        with LocalStack(config, Path(tmp) / "run", redis_port=6405,
                        ray_num_cpus=2 * args.replicas + 2) as stack:
            rows = asyncio.run(drive(stack.base_url, args))
    window = args.measure_s * args.rounds
    results: dict[str, Any] = {arm: summary(rows[arm], window) for arm in ARMS}
    for arm in ARMS:
        results[arm]["replicas_used"] = len({r.get("replica") for r in rows[arm]} - {None})
    results["ratios"] = {
        "ttft_p50": round(results["affinity"]["ttft_p50_s"] / results["p2c"]["ttft_p50_s"], 3),
        "ttft_p95": round(results["affinity"]["ttft_p95_s"] / results["p2c"]["ttft_p95_s"], 3)}
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "requests.json").write_text(json.dumps(rows))
    plot(results, rows, args.out / "prefix-routing.png")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
