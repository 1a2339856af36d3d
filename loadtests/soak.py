"""Soak: a steady open-loop load for a long time, watching for what only time shows.

`python -m loadtests.soak --rate 16 --minutes 30` starts its own stack (the chaos harness's
`ChaosStack`: `sluice serve` on its own ports, `small` on one engine replica, one ingress
replica, Redis behind a pass-through proxy), then sends chat requests at a fixed rate
(`loadtests.chaos.load`: half streamed, 32-64 tokens each, `ignore_eos`, every prompt its
own) in windows of `--window-s`. After each window it records the window's error rate and
latency (p50/p99 of the answered requests) and the resident memory of every process of the
stack: the ingress replica, the engine replica and its engine core, Redis. The report is the
drift from the first windows to the last (`--out` JSON, `--plot` PNG).

The default rate is about 70% of what one `small` replica sustained within its SLOs in the
capacity plan (23 req/s, BENCHMARKS.md, "Capacity plan"), with outputs of the same median
length (48 tokens). Windows run back to back. Each window waits for its last answers, so
about a second passes between them with fewer requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from loadtests.chaos import faults, load
from loadtests.chaos.outcomes import OK, classify_all
from loadtests.chaos.stack import ChaosStack, StackSettings


@dataclass
class Window:
    index: int
    at_s: float  # since the soak began, at the window's end
    sent: int
    ok: int
    errors: int
    p50_s: float | None
    p99_s: float | None
    rss_mb: dict[str, float]  # process role -> resident memory


def _say(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


def _rss_mb(proc: psutil.Process) -> float:
    try:
        return proc.memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def memory(stack: ChaosStack, model: str) -> dict[str, float]:
    """Resident memory of each process the stack runs, by role (summed over replicas)."""
    out: dict[str, float] = {}
    ingress = faults.ingress_replicas(stack.serve_pid)
    out["ingress"] = sum(_rss_mb(p) for p in ingress)
    engines = faults.engine_replicas(stack.serve_pid, model)
    out["engine replica"] = sum(_rss_mb(p) for p in engines)
    out["engine core"] = sum(_rss_mb(c) for p in engines for c in faults.engine_cores(p))
    if stack.redis.pid is not None:
        out["redis"] = _rss_mb(psutil.Process(stack.redis.pid))
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_window(stack: ChaosStack, spec: load.LoadSpec, index: int, seed: int,
               started: float) -> Window:
    planned = load.plan(spec, seed + index, f"soak-{seed}-w{index:03d}")
    window_start = time.monotonic()
    observations = asyncio.run(load.run(stack.base_url, planned, spec, window_start))
    classify_all(observations)
    ok = [o for o in observations if o.kind == OK]
    latencies = [o.ended_s - o.sent_s for o in ok]
    return Window(index, time.monotonic() - started, len(observations), len(ok),
                  len(observations) - len(ok), _percentile(latencies, 0.5),
                  _percentile(latencies, 0.99), memory(stack, spec.model))


def drift(windows: list[Window], edge: int = 3) -> dict[str, object]:
    """First `edge` windows against the last `edge`: latency and memory."""
    first, last = windows[:edge], windows[-edge:]

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return statistics.fmean(kept) if kept else None

    roles = sorted({r for w in windows for r in w.rss_mb})
    return {
        "p50_s": (mean([w.p50_s for w in first]), mean([w.p50_s for w in last])),
        "p99_s": (mean([w.p99_s for w in first]), mean([w.p99_s for w in last])),
        "rss_mb": {r: (mean([w.rss_mb.get(r) for w in first]),
                       mean([w.rss_mb.get(r) for w in last])) for r in roles},
        "error_rate": sum(w.errors for w in windows) / max(1, sum(w.sent for w in windows)),
        "sent": sum(w.sent for w in windows),
    }


def plot(windows: list[Window], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [w.at_s / 60 for w in windows]
    fig, (lat, mem) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    lat.plot(minutes, [w.p50_s for w in windows], label="p50")
    lat.plot(minutes, [w.p99_s for w in windows], label="p99")
    lat.set_ylabel("request latency (s)")
    lat.legend()
    lat.set_title(title)
    for role in sorted({r for w in windows for r in w.rss_mb}):
        mem.plot(minutes, [w.rss_mb.get(role, 0) for w in windows], label=role)
    mem.set_ylabel("resident memory (MiB)")
    mem.set_xlabel("minutes")
    mem.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=16.0, help="requests per second")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--http-port", type=int, default=8860)
    p.add_argument("--redis-port", type=int, default=6435)
    p.add_argument("--out", type=Path, default=Path("bench-results/soak/soak.json"))
    p.add_argument("--plot", type=Path, default=Path("docs/benchmarks/soak.png"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    spec = load.LoadSpec(rate=args.rate, duration_s=args.window_s, min_tokens=32,
                         max_tokens=64, client_timeout_s=60.0)
    settings = StackSettings(http_port=args.http_port, redis_port=args.redis_port,
                             proxy_port=args.redis_port + 1, engine_replicas=1,
                             ingress_replicas=1, first_token_timeout_s=30.0)
    windows: list[Window] = []
    with ChaosStack(Path(tempfile.mkdtemp(prefix="sluice-soak-")), settings, _say) as stack:
        started = time.monotonic()
        count = max(1, round(args.minutes * 60 / args.window_s))
        for i in range(count):
            w = run_window(stack, spec, i, args.seed, started)
            windows.append(w)
            _say(f"window {i + 1}/{count} at {w.at_s / 60:.1f} min: {w.ok}/{w.sent} ok, "
                 f"p50 {w.p50_s or 0:.2f} s, p99 {w.p99_s or 0:.2f} s, memory "
                 + ", ".join(f"{r} {mb:.0f} MiB" for r, mb in w.rss_mb.items()))
    summary = drift(windows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "summary": summary,
                                    "windows": [asdict(w) for w in windows]}, indent=1))
    plot(windows, args.plot, f"soak: {args.rate:g} req/s for {args.minutes:g} min")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
