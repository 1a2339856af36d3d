"""How many canary requests a rollout step needs, and how often it rolls back a good canary.

    python -m loadtests.canary_power --runs 200 --shares 5,50 --out bench-results/canary-power

A simulation of one canary step as the rollout runs it: `sluice.rollouts.canary.evaluate`
with the default gates (`GateConfig`: 95% confidence, 200 requests per variant before any
verdict, +1 point of errors allowed, p95 TTFT and TPOT at most 1.2x the baseline's), looked
at every `--look-every` canary requests, the baseline carrying the rest of the traffic at
the step's share (at 5%, 19 baseline requests per canary request; at 50%, one). Time is
counted in canary requests: the step lasts at least `--step-requests` and at most
`--max-requests` (then an undecided step rolls back). Scenarios (the baseline: 1% errors,
lognormal TTFT with median 200 ms and sigma 0.5, so p95 about 450 ms, TPOT median 20 ms):
- a good canary, the same as the baseline;
- errors +5 points (6%), the regression the issue names, and +2 points (3%);
- 1.5x slower (+50% p95 TTFT and TPOT), and 1.25x slower.
Per scenario and share: the share of runs a gate rolled back, the share still undecided at
the bound (also rolled back), and the canary requests it took (median, p90) to roll back
or to advance. Writes results.json and a plot of P(rolled back
by n canary requests).

`--agreement` adds the quality gate (`sluice.rollouts.gates.agreement_gate`, 50 compared
pairs before it decides, 95%): for a true agreement rate against `min_agreement` 0.9, the
share of runs it breaches or passes and the pairs it takes, looked at every 10 pairs. At
the default `quality_sample` of 10%, a pair costs 10 canary requests.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.rollouts import canary
from sluice.rollouts.canary import CanaryPlan, Window
from sluice.rollouts.gates import agreement_gate


@dataclass(frozen=True)
class Variant:
    error_rate: float = 0.01
    slowdown: float = 1.0

    def draw(self, rng: random.Random, n: int) -> tuple[int, list[float], list[float]]:
        errors = sum(rng.random() < self.error_rate for _ in range(n))
        ttft = [self.slowdown * 0.2 * rng.lognormvariate(0, 0.5) for _ in range(n)]
        tpot = [self.slowdown * 0.02 * rng.lognormvariate(0, 0.5) for _ in range(n)]
        return errors, ttft, tpot


BASELINE = Variant()
SCENARIOS = {
    "good canary (same as baseline)": Variant(),
    "errors +5 points (6% vs 1%)": Variant(error_rate=0.06),
    "errors +2 points (3% vs 1%)": Variant(error_rate=0.03),
    "1.5x slower (+50% p95)": Variant(slowdown=1.5),
    "1.25x slower (+25% p95)": Variant(slowdown=1.25),
}


def one_step(rng: random.Random, candidate: Variant, share_pct: int, every: int,
             step_requests: int, max_requests: int) -> tuple[str, int]:
    """('rolled_back' (a gate breached), 'undecided' (rolled back at max_step_s for lack of
    evidence) or 'advanced', canary requests seen) for one simulated step."""
    plan = CanaryPlan("m", "v1", "v2", steps=(share_pct, 100), step_s=step_requests,
                      max_step_s=max_requests)
    state = canary.start(plan, 0)
    per_look = max(1, round(every * (100 - share_pct) / share_pct))
    c_err = b_err = 0
    c_ttft: list[float] = []
    c_tpot: list[float] = []
    b_ttft: list[float] = []
    b_tpot: list[float] = []
    n = 0
    while True:
        n += every
        e, t, p = candidate.draw(rng, every)
        c_err, c_ttft, c_tpot = c_err + e, c_ttft + t, c_tpot + p
        e, t, p = BASELINE.draw(rng, per_look)
        b_err, b_ttft, b_tpot = b_err + e, b_ttft + t, b_tpot + p
        state = canary.evaluate(
            state, n, Window(n, c_err, tuple(c_ttft), tuple(c_tpot)),
            Window(len(b_ttft), b_err, tuple(b_ttft), tuple(b_tpot)))
        if state.status == "rolled_back":
            undecided = state.reason.startswith("not enough evidence")
            return ("undecided" if undecided else "rolled_back"), n
        if state.status == "promoted":
            return "advanced", n


def _pct(xs: list[int], q: float) -> int | None:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def summary(outcomes: list[tuple[str, int]], max_requests: int) -> dict[str, Any]:
    back = [n for kind, n in outcomes if kind == "rolled_back"]
    ahead = [n for kind, n in outcomes if kind == "advanced"]
    undecided = sum(1 for kind, _ in outcomes if kind == "undecided")
    return {"runs": len(outcomes), "rolled_back": len(back) / len(outcomes),
            "undecided": undecided / len(outcomes),
            "rollback_n_median": _pct(back, 0.5), "rollback_n_p90": _pct(back, 0.9),
            "advance_n_median": _pct(ahead, 0.5), "advance_n_p90": _pct(ahead, 0.9),
            "rollback_by_n": [(n, sum(1 for b in back if b <= n) / len(outcomes))
                              for n in range(0, max_requests + 1, 50)]}


AGREEMENT = [(0.98, 0.9), (0.95, 0.9), (0.90, 0.9), (0.85, 0.9), (0.80, 0.9), (0.70, 0.9)]


def agreement_power(rng: random.Random, runs: int, every: int = 10, cap: int = 5000
                    ) -> list[dict[str, Any]]:
    rows = []
    for rate, bound in AGREEMENT:
        outcomes = []
        for _ in range(runs):
            agreed = pairs = 0
            verdict = "wait"
            while verdict == "wait" and pairs < cap:
                agreed += sum(rng.random() < rate for _ in range(every))
                pairs += every
                verdict = agreement_gate(agreed, pairs, bound, 0.95, 50).verdict
            outcomes.append((verdict, pairs))
        decided = [n for v, n in outcomes if v != "wait"]
        rows.append({"agreement": rate, "min_agreement": bound,
                     "breach": sum(v == "breach" for v, _ in outcomes) / runs,
                     "pass": sum(v == "pass" for v, _ in outcomes) / runs,
                     "pairs_median": _pct(decided, 0.5), "pairs_p90": _pct(decided, 0.9)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--shares", default="5,50", help="the step's canary share, percent")
    ap.add_argument("--step-requests", type=int, default=400)
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--look-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/canary-power"))
    ap.add_argument("--plot", type=Path, default=Path("docs/benchmarks/canary_power.png"))
    ap.add_argument("--agreement", action="store_true", help="also the quality gate")
    args = ap.parse_args()
    shares = [int(s) for s in args.shares.split(",")]
    results: dict[str, Any] = {"runs": args.runs, "step_requests": args.step_requests,
                               "max_requests": args.max_requests,
                               "look_every": args.look_every, "gates": vars(canary.GateConfig()),
                               "results": {}}
    print("| share | scenario | breached: rolled back | undecided at the bound | to roll back: "
          "median / p90 | to advance: median / p90 |\n|---|---|---|---|---|---|")
    for share in shares:
        for name, candidate in SCENARIOS.items():
            rng = random.Random(args.seed)
            outcomes = []
            for i in range(args.runs):
                outcomes.append(one_step(rng, candidate, share, args.look_every,
                                         args.step_requests, args.max_requests))
                if (i + 1) % max(1, args.runs // 2) == 0:
                    print(f"[canary-power] {share}% {name}: {i + 1}/{args.runs}",
                          file=sys.stderr, flush=True)
            s = summary(outcomes, args.max_requests)
            results["results"][f"{share}%: {name}"] = s
            print(f"| {share}% | {name} | {s['rolled_back']:.1%} | {s['undecided']:.1%} | "
                  f"{s['rollback_n_median']} / "
                  f"{s['rollback_n_p90']} | {s['advance_n_median']} / {s['advance_n_p90']} |",
                  flush=True)
    if args.agreement:
        results["agreement"] = agreement_power(random.Random(args.seed), args.runs)
        print("\n| true agreement | min_agreement | breached | passed | pairs to decide: "
              "median / p90 |\n|---|---|---|---|---|")
        for r in results["agreement"]:
            print(f"| {r['agreement']:.0%} | {r['min_agreement']:.0%} | {r['breach']:.1%} | "
                  f"{r['pass']:.1%} | {r['pairs_median']} / {r['pairs_p90']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _plot(results, args.plot)
    return 0


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, s in results["results"].items():
        xs, ys = zip(*s["rollback_by_n"])
        ax.plot(xs, ys, label=name, linestyle="-" if name.startswith("5%") else "--")
    ax.set_xlabel("canary requests in the step")
    ax.set_ylabel("share of runs rolled back by then")
    ax.set_title(f"One canary step, default gates ({results['runs']} runs per line; "
                 f"step at least {results['step_requests']} canary requests)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
