"""How many canary requests the rollout gates need, and how often they roll back a good one.

    python -m loadtests.canary_power --runs 400 --out bench-results/canary-power

A simulation of the canary's own procedure (`sluice.rollouts.gates` with the defaults of
`sluice.rollouts.canary.GateConfig`), looked at every `--look-every` canary requests as the
ingress would at each evaluation, with the baseline carrying the rest of the traffic at the
step's share (5%: 19 baseline requests per canary request). Scenarios:
- errors: the baseline fails 1% of requests; the canary 1% (a good canary), 6% (+5
  points, the regression the issue names) or 3% (+2 points, a smaller one);
- latency: lognormal TTFT (median 200 ms, sigma 0.5, so p95 about 450 ms) for the baseline;
  the canary the same (good), 1.5x slower (+50% p95) or 1.25x slower (+25%).
For each: the share of runs that rolled back within `--max-requests` canary requests, and
the canary requests it took (median, p90) to the first decision (rollback, or pass for a
good canary). Writes results.json and a plot of P(rolled back by n requests).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice.rollouts import gates
from sluice.rollouts.canary import GateConfig

Look = Callable[[random.Random, int], str]


def _error_scenario(p_base: float, p_canary: float, ratio: int, cfg: GateConfig
                    ) -> Callable[[random.Random, int, int], list[tuple[int, str]]]:
    def run(rng: random.Random, max_n: int, every: int) -> list[tuple[int, str]]:
        ce = be = 0
        out = []
        for n in range(every, max_n + 1, every):
            ce += sum(rng.random() < p_canary for _ in range(every))
            be += sum(rng.random() < p_base for _ in range(every * ratio))
            v = gates.error_gate(ce, n, be, n * ratio, cfg.error_margin, cfg.confidence,
                                 cfg.min_requests).verdict
            out.append((n, v))
            if v != "wait":
                break
        return out
    return run


def _latency_scenario(slowdown: float, ratio: int, cfg: GateConfig
                      ) -> Callable[[random.Random, int, int], list[tuple[int, str]]]:
    def run(rng: random.Random, max_n: int, every: int) -> list[tuple[int, str]]:
        canary: list[float] = []
        baseline: list[float] = []
        out = []
        for n in range(every, max_n + 1, every):
            canary += [slowdown * 0.2 * rng.lognormvariate(0, 0.5) for _ in range(every)]
            baseline += [0.2 * rng.lognormvariate(0, 0.5) for _ in range(every * ratio)]
            v = gates.latency_gate("ttft", canary, baseline, cfg.latency_quantile,
                                   cfg.ttft_max_ratio, cfg.confidence, cfg.min_requests).verdict
            out.append((n, v))
            if v != "wait":
                break
        return out
    return run


def _summary(outcomes: list[list[tuple[int, str]]], max_n: int) -> dict[str, Any]:
    decided = [o[-1] for o in outcomes if o[-1][1] != "wait"]
    breaches = [n for n, v in decided if v == "breach"]
    passes = [n for n, v in decided if v == "pass"]

    def pct(xs: list[int], q: float) -> int | None:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else None
    return {"runs": len(outcomes), "rolled_back": len(breaches) / len(outcomes),
            "passed": len(passes) / len(outcomes),
            "undecided": 1 - len(decided) / len(outcomes),
            "rollback_n_median": pct(breaches, 0.5), "rollback_n_p90": pct(breaches, 0.9),
            "pass_n_median": pct(passes, 0.5), "pass_n_p90": pct(passes, 0.9),
            "rollback_by_n": [(n, sum(1 for b in breaches if b <= n) / len(outcomes))
                              for n in range(0, max_n + 1, 50)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--max-requests", type=int, default=3000)
    ap.add_argument("--look-every", type=int, default=25)
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/canary-power"))
    ap.add_argument("--plot", type=Path, default=Path("docs/benchmarks/canary_power.png"))
    args = ap.parse_args()
    cfg = GateConfig()
    ratio = round((1 - args.share) / args.share)
    scenarios = {
        "errors, good canary (1% vs 1%)": _error_scenario(0.01, 0.01, ratio, cfg),
        "errors, +5 points (6% vs 1%)": _error_scenario(0.01, 0.06, ratio, cfg),
        "errors, +2 points (3% vs 1%)": _error_scenario(0.01, 0.03, ratio, cfg),
        "TTFT, good canary (same)": _latency_scenario(1.0, ratio, cfg),
        "TTFT, +50% (1.5x slower)": _latency_scenario(1.5, ratio, cfg),
        "TTFT, +25% (1.25x slower)": _latency_scenario(1.25, ratio, cfg),
    }
    results: dict[str, Any] = {"gates": cfg.__dict__, "share": args.share,
                               "look_every": args.look_every, "max_requests": args.max_requests,
                               "runs": args.runs, "scenarios": {}}
    for name, scenario in scenarios.items():
        rng = random.Random(args.seed)
        outcomes = []
        for i in range(args.runs):
            outcomes.append(scenario(rng, args.max_requests, args.look_every))
            if (i + 1) % max(1, args.runs // 4) == 0:
                print(f"[canary-power] {name}: {i + 1}/{args.runs}", file=sys.stderr)
        results["scenarios"][name] = _summary(outcomes, args.max_requests)
        s = results["scenarios"][name]
        print(f"| {name} | {s['rolled_back']:.1%} | {s['passed']:.1%} | {s['undecided']:.1%} |"
              f" {s['rollback_n_median']} / {s['rollback_n_p90']} | "
              f"{s['pass_n_median']} / {s['pass_n_p90']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _plot(results, args.plot)
    return 0


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, s in results["scenarios"].items():
        xs, ys = zip(*s["rollback_by_n"])
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("canary requests")
    ax.set_ylabel("share of runs rolled back by then")
    ax.set_title(f"Canary gates at {results['share']:.0%} share "
                 f"(confidence {results['gates']['confidence']:.0%}, "
                 f"look every {results['look_every']} requests)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
