"""Chaos run: faults under a steady load against a stack of its own, one scenario at a time.

    python -m loadtests.chaos --rate 4 --duration 40 --seed 0 \\
        [--scenarios engine-kill,ingress-kill,redis-restart,redis-pause,redis-proxy] \\
        [--outage 10] [--out bench-results/chaos/chaos.json] [--plot docs/benchmarks/chaos.png]

Starts `sluice serve` (two ingress replicas behind Serve's proxy, `small` as two engine
replicas, Redis behind a fault proxy: `loadtests.chaos.stack`), waits until every replica
serves, then per scenario: open-loop load for `--duration` s with the fault at
`--fault-at` s (`loadtests.chaos.scenarios`), the outcome of every request, the time to
recovery and the ledger check; then it waits until the stack has replaced what the fault
killed before the next scenario. Progress goes to stderr; the chaos table (Markdown) to
stdout; every request's outcome to `--out`; the success rate over time to `--plot`. Exits
1 if a scenario broke the promise (`loadtests.chaos.promise`), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.chaos import promise, report, scenarios
from loadtests.chaos.faults import Faults
from loadtests.chaos.load import LoadSpec
from loadtests.chaos.runner import ScenarioResult, run_scenario
from loadtests.chaos.stack import ROOT, ChaosStack, StackSettings


def _say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtests.chaos",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds per scenario")
    ap.add_argument("--scenarios", default=",".join(scenarios.DEFAULT),
                    help=f"comma-separated, from {', '.join(scenarios.NAMES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/chaos/chaos.json"))
    ap.add_argument("--plot", type=Path, default=Path("docs/benchmarks/chaos.png"))
    ap.add_argument("--fault-at", type=float, default=10.0,
                    help="seconds of healthy load before the fault")
    ap.add_argument("--outage", type=float, default=10.0,
                    help="seconds Redis stays down or paused, or the proxy faulty")
    ap.add_argument("--latency", type=float, default=0.2,
                    help="seconds the proxy adds each way (redis-proxy)")
    ap.add_argument("--stream-share", type=float, default=0.5)
    ap.add_argument("--max-tokens", default="16,32", help="MIN,MAX completion tokens")
    ap.add_argument("--client-timeout", type=float, default=30.0,
                    help="hard per-request bound; past it a request counts as hung")
    ap.add_argument("--first-token-timeout", type=float, default=15.0,
                    help="the stack's ingress.first_token_timeout_s (under the client's)")
    ap.add_argument("--heal-timeout", type=float, default=600.0,
                    help="longest wait for the stack to replace what a fault killed")
    ap.add_argument("--http-port", type=int, default=8840)
    ap.add_argument("--redis-port", type=int, default=6425)
    ap.add_argument("--proxy-port", type=int, default=6426)
    args = ap.parse_args(argv)
    args.names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    for name in args.names:
        if name not in scenarios.NAMES:
            ap.error(f"unknown scenario {name!r}; known: {', '.join(scenarios.NAMES)}")
    if args.fault_at + args.outage >= args.duration:
        ap.error("--fault-at + --outage must leave part of --duration to recover in")
    low, _, high = args.max_tokens.partition(",")
    args.token_range = (int(low), int(high or low))
    return args


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in
                      Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {"cpus": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def _git() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.rstrip()  # porcelain lines start " M"
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": run("rev-parse", "HEAD").strip(),
            "modified": [line[3:] for line in run("status", "--porcelain").splitlines()]}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    spec = LoadSpec(rate=args.rate, duration_s=args.duration, stream_share=args.stream_share,
                    min_tokens=args.token_range[0], max_tokens=args.token_range[1],
                    client_timeout_s=args.client_timeout)
    settings = StackSettings(http_port=args.http_port, redis_port=args.redis_port,
                             proxy_port=args.proxy_port,
                             first_token_timeout_s=args.first_token_timeout)
    meta = {"command": " ".join(["python -m loadtests.chaos", *(argv or sys.argv[1:])]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": _machine(), "git": _git(), "load": spec.__dict__,
            "stack": settings.__dict__, "seed": args.seed, "outage_s": args.outage,
            "latency_s": args.latency, "fault_at_s": args.fault_at}
    run_id = f"{args.seed}-{int(time.time()) % 100000}"
    results: list[ScenarioResult] = []
    broken: dict[str, list[str]] = {}
    run_dir = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
    with ChaosStack(run_dir, settings, _say) as stack:
        faults = Faults(stack.serve_pid, stack.redis, stack.proxy, random.Random(args.seed))
        try:
            for i, name in enumerate(args.names):
                if i:
                    _say("waiting for every replica to serve again "
                         f"(up to {args.heal_timeout:g} s)")
                    _say(f"healthy after {stack.wait_healthy(args.heal_timeout):.0f} s")
                scenario = scenarios.build(name, args.fault_at, args.outage, args.latency)
                try:
                    result = run_scenario(scenario, faults, stack.base_url, stack.redis_url,
                                          spec, args.seed, run_id, _say)
                finally:
                    faults.heal()
                results.append(result)
                broken[name] = promise.violations(result)
                meta["promise"] = broken
                report.write_json(results, meta, args.out)
        finally:
            faults.close()
        meta["serve_log_tail"] = stack.log_tail(20000)
    report.write_json(results, meta, args.out)
    report.plot(results, args.plot, f"make chaos: {args.rate:g} req/s, {args.duration:g} s "
                f"per scenario, seed {args.seed} ({meta['date'][:10]})")
    print(report.markdown_table(results))
    for name, problems in broken.items():
        print(f"- {name}: " + ("; ".join(problems) if problems else "promise held"))
    _say(f"wrote {args.out} and {args.plot}")
    return 1 if any(broken.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
