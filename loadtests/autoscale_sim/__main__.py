"""Simulate Sluice's SLO autoscaling policy against Ray Serve's stock policy at cluster scale.

    python -m loadtests.autoscale_sim --out bench-results/autoscale-sim \\
        [--startup-s 60] [--hours 4] [--seed 0] [--peak-rps 4000]

Runs one trace (a compressed diurnal day with bursts) through the same fleet model under
Ray's stock policy at target_ongoing_requests 2 (Ray's default) and at the capacity plan's
sustainable in-flight per replica, and under Sluice's SLOPolicy; writes results.json and
autoscale-sim.png, and prints a Markdown table. A model, not a measurement: see fleet.py for
what is modelled and what is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.autoscale_sim.params import (
    FleetParams,
    SimParams,
    TraceParams,
    catalog_slo,
    initial_replicas,
    ray_targets,
)
from loadtests.autoscale_sim.plot import plot
from loadtests.autoscale_sim.policies import ServePolicy, ray_stock, sluice_slo
from loadtests.autoscale_sim.results import markdown_table, summarize
from loadtests.autoscale_sim.sim import RunRecord, Simulation
from loadtests.autoscale_sim.trace import Trace, make_trace


def policies(params: SimParams) -> list[ServePolicy]:
    f = params.fleet
    out = [ray_stock(t, f.min_replicas, f.max_replicas) for t in ray_targets(params)]
    return out + [sluice_slo(params.slo, params.sluice, f.min_replicas, f.max_replicas)]


def run_all(params: SimParams, trace: Trace,
            progress: Callable[[str], None] = print) -> list[RunRecord]:
    initial = initial_replicas(params, float(trace.rate_rps[0]))
    records = []
    for policy in policies(params):
        started = time.perf_counter()
        progress(f"{policy.name}: from {initial} replicas")
        records.append(Simulation(policy, trace, params, initial).run(progress))
        progress(f"{policy.name}: {time.perf_counter() - started:.1f} s wall")
    return records


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtests.autoscale_sim",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/autoscale-sim"))
    ap.add_argument("--startup-s", type=float, default=FleetParams().startup_s,
                    help="replica start-up delay (scheduling + engine start)")
    ap.add_argument("--hours", type=float, default=TraceParams().hours,
                    help="length of the compressed day")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-rps", type=float, default=TraceParams().peak_rps)
    ap.add_argument("--max-replicas", type=int, default=FleetParams().max_replicas)
    ap.add_argument("--ray-targets", default=None, help="comma-separated "
                    "target_ongoing_requests of the stock-policy runs (default: Ray's 2 and "
                    "the capacity plan's sustainable in-flight)")
    ap.add_argument("--catalog", type=Path, default=Path("platform/catalog.yaml"),
                    help="where the model's SLO comes from")
    ap.add_argument("--model", default="small")
    return ap.parse_args(argv)


def _params(args: argparse.Namespace) -> SimParams:
    return SimParams(
        trace=TraceParams(hours=args.hours, seed=args.seed, peak_rps=args.peak_rps),
        fleet=FleetParams(startup_s=args.startup_s, max_replicas=args.max_replicas),
        slo=catalog_slo(args.catalog, args.model), seed=args.seed,
        ray_targets=(tuple(float(t) for t in args.ray_targets.split(","))
                     if args.ray_targets else None))


def _write(out: Path, params: SimParams, trace: Trace, summaries: dict[str, Any],
           wall_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"note": "A simulation (a model fed with measured single-replica latency), not a "
                   "measurement; see loadtests/autoscale_sim/fleet.py for what it models.",
           "params": params.model_dump(mode="json"),
           "ray_targets": list(ray_targets(params)),
           "bursts": [vars(b) for b in trace.bursts],
           "wall_s": round(wall_s, 1), "policies": summaries}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    # Sluice's policy logs a WARNING per change of mind: thousands in a simulated day
    logging.getLogger("sluice.autoscaling.serve_policy").setLevel(logging.ERROR)
    args = _args(argv)
    params = _params(args)
    started = time.perf_counter()
    trace = make_trace(params.trace)
    print(f"trace: {params.trace.hours:g} h, {int(trace.arrivals.sum()):,} requests, "
          f"peak {trace.rate_rps.max():,.0f} req/s, {len(trace.bursts)} bursts", flush=True)
    records = run_all(params, trace, lambda line: print(line, flush=True))
    summaries = {r.name: summarize(r, params.slo) for r in records}
    slo = params.slo
    plot(records, args.out / "autoscale-sim.png",
         f"SLO p95 TTFT <= {slo.ttft_p95_s} s, p95 TPOT <= {slo.tpot_p95_s * 1000:g} ms, "
         f"start-up {params.fleet.startup_s:g} s")
    wall = time.perf_counter() - started
    _write(args.out, params, trace, summaries, wall)
    print()
    print(markdown_table(summaries))
    print(f"\nwall time {wall:.1f} s; wrote {args.out}/results.json and "
          f"{args.out}/autoscale-sim.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
