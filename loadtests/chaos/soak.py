"""Soak: a steady load at a share of measured capacity for a long time, no fault.

    python -m loadtests.chaos.soak --minutes 30 --share 0.7 \\
        [--out bench-results/soak/soak.json] [--plot docs/benchmarks/soak.png]

The chaos stack (`loadtests.chaos.stack`: two ingress replicas, `small` as two engine
replicas, Redis behind the fault proxy, which only passes traffic here) is started, then:
1. capacity: open-loop steps at rising rates (`--capacity-rates`, `--step-s` each) with the
   chaos load's request mix; the highest rate whose answers all succeed with p95 latency
   within `--latency-slo-s` and that was actually delivered (answers/s within 10% of the
   rate) is the capacity;
2. the soak: the same mix at `--share` of that capacity for `--minutes`, while each
   process's resident memory is sampled every `--sample-s` s (ingress replicas, engine
   replicas with their vLLM engine cores, redis-server, Serve's controller and proxy, the
   `sluice serve` process);
3. the report: per window (`--window-min`), requests, error rate, p50/p95 latency and
   time to a stream's first event (vLLM's role chunk, which comes with the first token); per process role, memory at the start and the end and its growth per
   hour (least squares over the samples after the first window, the warm-up); the ledger
   check over every accepted request. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from loadtests.chaos import load
from loadtests.chaos.faults import descendants, engine_cores, engine_replicas, ingress_replicas
from loadtests.chaos.ledger_check import check
from loadtests.chaos.outcomes import OK, Observation, classify_all, summarize
from loadtests.chaos.stack import ChaosStack, StackSettings


def _say(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# ---- pure: what the observations and the samples say --------------------------------------

def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window_stats(observations: Sequence[Observation], window_s: float) -> list[dict[str, Any]]:
    """Per window of send time: requests, errors (anything but a complete answer), the
    error rate, and the p50/p95 of latency (send to last byte) and of TTFT (streams)."""
    by: dict[int, list[Observation]] = defaultdict(list)
    for o in observations:
        by[int(o.sent_s // window_s)].append(o)
    rows = []
    for w in sorted(by):
        obs = by[w]
        ok = [o for o in obs if o.kind == OK]
        lat = [o.ended_s - o.sent_s for o in ok]
        ttft = [o.first_chunk_s - o.sent_s for o in ok if o.stream and o.first_chunk_s]
        rows.append({"from_s": w * window_s, "requests": len(obs), "errors": len(obs) - len(ok),
                     "error_rate": (len(obs) - len(ok)) / len(obs),
                     "latency_p50_s": _pct(lat, 0.5), "latency_p95_s": _pct(lat, 0.95),
                     "ttft_p50_s": _pct(ttft, 0.5), "ttft_p95_s": _pct(ttft, 0.95)})
    return rows


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value), per hour; None for fewer than 3 points."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 3600


def memory_growth(samples: Sequence[dict[str, Any]], warmup_s: float
                  ) -> dict[str, dict[str, float | None]]:
    """Per role: MB at the first and last sample, the peak, and the growth in MB/h over
    the samples after `warmup_s` (caches and pools fill first)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        for role, mb in s["rss_mb"].items():
            series[role].append((s["t_s"], mb))
    return {role: {"first_mb": pts[0][1], "last_mb": pts[-1][1],
                   "peak_mb": max(v for _, v in pts),
                   "mb_per_hour": slope_per_hour([p for p in pts if p[0] >= warmup_s])}
            for role, pts in series.items()}


def capacity(steps: Sequence[dict[str, Any]], latency_slo_s: float) -> float | None:
    """The highest step rate with no error, p95 latency within the SLO, and the rate
    delivered (answers per second within 10% of what was sent)."""
    good = [s["rate"] for s in steps
            if s["errors"] == 0 and s["latency_p95_s"] is not None
            and s["latency_p95_s"] <= latency_slo_s and s["delivered_rps"] >= 0.9 * s["rate"]]
    return max(good) if good else None


# ---- the processes, sampled ---------------------------------------------------------------

def _rss_mb(procs: Sequence[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def processes(serve_pid: int, redis_pid: int | None, model: str
              ) -> dict[str, list[psutil.Process]]:
    """The stack's processes by role (each engine replica with its engine core)."""
    roles: dict[str, list[psutil.Process]] = {}
    for i, p in enumerate(ingress_replicas(serve_pid)):
        roles[f"ingress-{i}"] = [p]
    for i, p in enumerate(engine_replicas(serve_pid, model)):
        roles[f"engine-{i} (replica)"] = [p]
        roles[f"engine-{i} (vLLM core)"] = engine_cores(p)
    roles["serve controller"] = descendants(serve_pid, r"ServeController")
    roles["serve proxy"] = descendants(serve_pid, r"ProxyActor")
    roles["sluice serve"] = [psutil.Process(serve_pid)]
    if redis_pid is not None:
        roles["redis-server"] = [psutil.Process(redis_pid)]
    return roles


class Sampler:
    """Samples each role's resident memory every `every_s` on a thread of its own; the
    process list is looked up again each time (a replaced replica is a new process)."""

    def __init__(self, find: Callable[[], dict[str, list[psutil.Process]]],
                 every_s: float) -> None:
        self._find, self._every_s = find, every_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                roles = self._find()
            except psutil.Error:  # a process went away mid-lookup: try again next time
                self._stop.wait(1.0)
                continue
            self.samples.append({"t_s": round(time.monotonic() - self._t0, 1),
                                 "rss_mb": {r: round(_rss_mb(p), 1) for r, p in roles.items()
                                            if p},
                                 "pids": {r: [x.pid for x in p] for r, p in roles.items()}})
            self._stop.wait(self._every_s)

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# ---- the run ------------------------------------------------------------------------------

def _load(base_url: str, spec: load.LoadSpec, seed: int, prefix: str,
          progress_every_s: float = 30.0) -> list[Observation]:
    requests = load.plan(spec, seed, prefix)

    def progress(t: float, finished: list[Observation], in_flight: int) -> None:
        ok = sum(1 for o in finished if o.status == 200 and (o.body_ok or o.done))
        _say(f"{prefix}: {t:.0f}/{spec.duration_s:.0f} s, {len(finished)} finished "
             f"({ok} ok), {in_flight} in flight")

    observations = asyncio.run(load.run(base_url, requests, spec, time.monotonic(), progress,
                                        progress_every_s=progress_every_s))
    classify_all(observations, None)
    return observations


def measure_capacity(base_url: str, rates: Sequence[float], step_s: float, spec: load.LoadSpec,
                     seed: int, latency_slo_s: float) -> list[dict[str, Any]]:
    steps = []
    for rate in rates:
        step = load.LoadSpec(rate=rate, duration_s=step_s, model=spec.model,
                             stream_share=spec.stream_share, min_tokens=spec.min_tokens,
                             max_tokens=spec.max_tokens, client_timeout_s=spec.client_timeout_s)
        obs = _load(base_url, step, seed, f"soak-cap-{rate:g}", progress_every_s=step_s)
        ok = [o for o in obs if o.kind == OK]
        span = max((o.ended_s for o in obs), default=step_s)
        row = {"rate": rate, "sent": len(obs), "errors": len(obs) - len(ok),
               "delivered_rps": len(ok) / max(span, step_s),
               "latency_p95_s": _pct([o.ended_s - o.sent_s for o in ok], 0.95)}
        steps.append(row)
        _say(f"capacity step {rate:g} req/s: {row}")
        if row["errors"] or row["latency_p95_s"] is None or row["latency_p95_s"] > latency_slo_s:
            break
    return steps


def _plot(windows: list[dict[str, Any]], samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    mins = [w["from_s"] / 60 for w in windows]
    for key, label in (("latency_p50_s", "latency p50"), ("latency_p95_s", "latency p95"),
                       ("ttft_p95_s", "first event p95 (streams)")):
        ax1.plot(mins, [w[key] for w in windows], marker="o", label=label)
    ax1.set_ylabel("seconds")
    ax1b = ax1.twinx()
    ax1b.bar(mins, [100 * w["error_rate"] for w in windows], width=0.3, alpha=0.3,
             color="red", label="errors %")
    ax1b.set_ylabel("errors %")
    ax1.legend(loc="upper left")
    ax1.set_title("Soak: latency and errors per window")
    roles = sorted({r for s in samples for r in s["rss_mb"]})
    for role in roles:
        ax2.plot([s["t_s"] / 60 for s in samples if role in s["rss_mb"]],
                 [s["rss_mb"][role] for s in samples if role in s["rss_mb"]], label=role)
    ax2.set_xlabel("minutes")
    ax2.set_ylabel("resident MB")
    ax2.legend(fontsize=7, ncol=2)
    ax2.set_title("Resident memory per process")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _markdown(windows: list[dict[str, Any]], growth: dict[str, dict[str, Any]]) -> str:
    def f(v: float | None, scale: float = 1000, unit: str = " ms") -> str:
        return "-" if v is None else f"{v * scale:.0f}{unit}"
    lines = ["| window from (min) | requests | errors | latency p50 | latency p95 | first event p95 |",
             "|---|---|---|---|---|---|"]
    for w in windows:
        lines.append(f"| {w['from_s'] / 60:.0f} | {w['requests']} | {w['errors']} "
                     f"({100 * w['error_rate']:.2f}%) | {f(w['latency_p50_s'])} | "
                     f"{f(w['latency_p95_s'])} | {f(w['ttft_p95_s'])} |")
    lines += ["", "| process | MB at start | MB at end | peak MB | growth MB/h (after warm-up) |",
              "|---|---|---|---|---|"]
    for role, g in sorted(growth.items()):
        rate = "-" if g["mb_per_hour"] is None else f"{g['mb_per_hour']:+.1f}"
        lines.append(f"| {role} | {g['first_mb']:.0f} | {g['last_mb']:.0f} | "
                     f"{g['peak_mb']:.0f} | {rate} |")
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtests.chaos.soak",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--share", type=float, default=0.7, help="of the measured capacity")
    ap.add_argument("--rate", type=float, default=None,
                    help="soak at this rate (req/s) and skip the capacity steps")
    ap.add_argument("--capacity-rates", default="2,4,6,8,10,12,16,20")
    ap.add_argument("--step-s", type=float, default=30.0)
    ap.add_argument("--latency-slo-s", type=float, default=2.0,
                    help="p95 latency (send to last byte) a capacity step must meet")
    ap.add_argument("--window-min", type=float, default=5.0)
    ap.add_argument("--sample-s", type=float, default=15.0)
    ap.add_argument("--max-tokens", default="16,32", help="MIN,MAX completion tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/soak/soak.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/benchmarks/soak.png"))
    ap.add_argument("--http-port", type=int, default=8850)
    ap.add_argument("--redis-port", type=int, default=6430)
    ap.add_argument("--proxy-port", type=int, default=6431)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    low, _, high = args.max_tokens.partition(",")
    base = load.LoadSpec(rate=1.0, duration_s=1.0, min_tokens=int(low),
                         max_tokens=int(high or low), client_timeout_s=30.0)
    settings = StackSettings(http_port=args.http_port, redis_port=args.redis_port,
                             proxy_port=args.proxy_port, first_token_timeout_s=15.0,
                             ready_timeout_s=600.0)
    run_dir = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    with ChaosStack(run_dir, settings, progress=_say) as stack:
        steps: list[dict[str, Any]] = []
        rate = args.rate
        if rate is None:
            rates = [float(r) for r in args.capacity_rates.split(",")]
            steps = measure_capacity(stack.base_url, rates, args.step_s, base, args.seed,
                                     args.latency_slo_s)
            cap = capacity(steps, args.latency_slo_s)
            if cap is None:
                _say("no capacity step met the SLO; nothing to soak at")
                return 1
            rate = round(args.share * cap, 2)
            _say(f"capacity {cap:g} req/s; soaking at {rate:g} req/s ({args.share:g}x)")
        spec = load.LoadSpec(rate=rate, duration_s=args.minutes * 60, model=base.model,
                             min_tokens=base.min_tokens, max_tokens=base.max_tokens,
                             client_timeout_s=base.client_timeout_s)
        since_ms = int(time.time() * 1000) - 1000
        prefix = f"soak-{random.Random(args.seed).randrange(1 << 30):x}"

        def find() -> dict[str, list[psutil.Process]]:
            return processes(stack.serve_pid, stack.redis.pid, base.model)

        with Sampler(find, args.sample_s) as sampler:
            observations = _load(stack.base_url, spec, args.seed, prefix, progress_every_s=60)
        accepted = {o.request_id for o in observations if o.accepted}
        ledger = check(stack.redis_url, prefix, since_ms, accepted, timeout_s=60)
        log_tail = stack.log_tail(2000)
    windows = window_stats(observations, args.window_min * 60)
    growth = memory_growth(sampler.samples, warmup_s=args.window_min * 60)
    result = {"rate": rate, "minutes": args.minutes, "share": args.share,
              "capacity_steps": steps, "counts": summarize(observations),
              "ledger": ledger.as_dict(), "windows": windows, "memory": growth,
              "samples": sampler.samples, "serve_log_tail": log_tail}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    _plot(windows, sampler.samples, args.plot)
    print(f"soak at {rate:g} req/s for {args.minutes:g} min: {result['counts']}; ledger "
          f"delta {ledger.delta} (missing {len(ledger.missing)}, duplicates "
          f"{len(ledger.duplicates)})")
    print(_markdown(windows, growth))
    return 0 if ledger.exact else 1


if __name__ == "__main__":
    sys.exit(main())
