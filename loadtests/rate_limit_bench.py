"""What a rate-limit check costs per request, and how far a limit holds across replicas.

    python -m loadtests.rate_limit_bench --requests 3000 --rounds 3 --out bench-results/rate-limits

1. Added latency of `RateLimiter.reserve` + `settle` per request, in-process: no limit
   configured (the check is skipped), the replica-local counters (no Redis), and the shared
   counters in a real redis-server on loopback (started here). Rounds alternate the three;
   p50 and p99 of each.
2. How far a limit holds: 1, 2 and 4 limiters (as ingress replicas: each its own client and
   connection pool) send a concurrent burst of 3x the RPM limit for one key; accepted ÷ limit.
Prints progress per round; writes results.json and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sluice.accounting.rate_limits import RateLimiter
from sluice.accounting.tenancy import Principal
from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.errors import RateLimited
from sluice.schema.accounting import RateLimitsConfig

KEY = Principal("bench-key", "bench-tenant")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(rpm: int, tpm: int | None = None) -> RateLimitsConfig:
    limit: dict[str, Any] = {"scope": "key", "id": "*", "requests_per_minute": rpm}
    if tpm:
        limit["tokens_per_minute"] = tpm
    return RateLimitsConfig.model_validate({"limits": [limit], "store_timeout_ms": 1000})


def _spawn(coro: Any) -> None:
    asyncio.ensure_future(coro)


async def _latencies(limiter: RateLimiter, n: int, tag: str) -> list[float]:
    out = []
    for i in range(n):
        who = Principal(f"{tag}-{i % 50}", "bench-tenant")  # 50 keys: never refused
        started = time.perf_counter()
        if limiter.enabled:
            reservation = await limiter.reserve(who, 300)
            limiter.settle(reservation, 120)
        out.append((time.perf_counter() - started) * 1e6)
    return out


def _pcts(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_us": xs[len(xs) // 2], "p99_us": xs[int(len(xs) * 0.99)]}


async def _held(url: str, replicas: int, rpm: int, tag: str) -> float:
    limiters = [RateLimiter(_config(rpm), url, _spawn, replicas) for _ in range(replicas)]
    who = Principal(f"burst-{tag}", "bench-tenant")

    async def one(i: int) -> bool:
        try:
            await limiters[i % replicas].reserve(who, 1)
            return True
        except RateLimited:
            return False

    accepted = sum(await asyncio.gather(*(one(i) for i in range(3 * rpm))))
    for limiter in limiters:
        await limiter.close()
    return accepted / rpm


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(results["latency"])
    for i, pct in enumerate(("p50_us", "p99_us")):
        a.bar([x + i * 0.4 for x in range(len(names))],
              [results["latency"][n][pct] for n in names], width=0.4, label=pct[:3])
    a.set_xticks([x + 0.2 for x in range(len(names))], names)
    a.set_ylabel("µs per request (check + correction)")
    a.set_title("Rate-limit check")
    a.legend()
    held = results["held"]
    b.bar([str(k) for k in held], [held[k] for k in held], color="C2")
    b.axhline(1.0, color="k", lw=0.8)
    b.set_xlabel("ingress replicas (limiters)")
    b.set_ylabel("accepted ÷ limit (burst of 3x the limit)")
    b.set_title("How far the limit holds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rpm", type=int, default=200)
    parser.add_argument("--out", default="bench-results/rate-limits")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[float]] = {"none": [], "local": [], "redis": []}
    held: dict[int, list[float]] = {1: [], 2: [], 4: []}
    with LocalRedisServer(Path(tempfile.mkdtemp(prefix="rl-bench-")), port=_free_port()) as rs:
        for r in range(args.rounds):
            async def round_() -> None:
                makers = {"none": lambda: RateLimiter(RateLimitsConfig(), rs.url, _spawn),
                          "local": lambda: RateLimiter(_config(10**9, 10**12), None, _spawn),
                          "redis": lambda: RateLimiter(_config(10**9, 10**12), rs.url, _spawn)}
                for name in (list(makers) if r % 2 == 0 else list(makers)[::-1]):
                    limiter = makers[name]()
                    await _latencies(limiter, 50, f"warm{r}{name}")
                    samples[name] += await _latencies(limiter, args.requests, f"r{r}{name}")
                    await limiter.close()
                for replicas in held:
                    held[replicas].append(await _held(rs.url, replicas, args.rpm,
                                                      f"{r}-{replicas}"))
            asyncio.run(round_())
            print(f"[rate-limit-bench] round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{k} p50 {_pcts(v)['p50_us']:.0f} µs" for k, v in samples.items())
                  + "; held " + ", ".join(f"{k}: {v[-1]:.3f}" for k, v in held.items()),
                  file=sys.stderr)
    results = {"requests_per_round": args.requests, "rounds": args.rounds, "rpm": args.rpm,
               "latency": {k: _pcts(v) for k, v in samples.items()},
               "held": {k: statistics.median(v) for k, v in held.items()},
               "held_rounds": held}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "rate_limits.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
