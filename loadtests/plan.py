"""Capacity planner: how much load one replica of a model sustains within its SLOs, how many
replicas a target load needs, and what a million output tokens cost.

Drives a stepped ramp of concurrent streaming users (Locust, as a library; no think time, so
users = requests in flight) against a running Sluice whose model has one replica, measures
each step (throughput, tokens/s, TTFT and TPOT percentiles, errors, goodput), and takes the
highest step before the first SLO miss (SLOs from the model catalog) as the sustainable load.
Beside it, the goodput capacity: the highest step at which `--goodput-share` of requests met
every SLO jointly (errors count as misses), with the attainment's Wilson interval and the cost
per million *good* output tokens; and the knee of the throughput curve as a second reading.
With --validate-url (a Sluice running N replicas of the model) it then offers N times the
sustainable concurrency there and compares the measured throughput with N times the
prediction.

    python -m loadtests.plan --url http://127.0.0.1:8000 --model small \\
        --users 1,2,4,8,12,16 --step-s 20 --gpu-hourly-usd 2.0 --target-rps 50 \\
        --out bench-results/plan
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust import constant
from locust.env import Environment

from loadtests.locustfile import ShortChatUser
from loadtests.streaming import StreamResult
from sluice.capacity.analysis import (
    StepStats,
    cost_per_million_tokens,
    goodput_capacity,
    knee,
    replicas_needed,
    step_stats,
    sustainable,
    violations,
)
from sluice.schema.serving import SLO

ROOT = Path(__file__).resolve().parents[1]


class PlanUser(ShortChatUser):
    """Short-chat requests back to back: each user keeps one request in flight."""

    wait_time = constant(0)


class Load:
    """One Locust environment against one URL; steps change the number of users."""

    def __init__(self, url: str, model: str) -> None:
        self.env = Environment(user_classes=[PlanUser], host=url)
        self.env.parsed_options = argparse.Namespace(model=model)
        self.env.results = []  # type: ignore[attr-defined]  # filled by SluiceUser.chat
        self.runner = self.env.create_local_runner()

    def step(self, users: int, step_s: float, settle_s: float) -> list[StreamResult]:
        self.runner.start(users, spawn_rate=max(users, 1))
        gevent.sleep(settle_s)
        sink: list[StreamResult] = self.env.results  # type: ignore[attr-defined]
        sink.clear()
        gevent.sleep(step_s)
        window = list(sink)
        return window

    def stop(self) -> None:
        self.runner.quit()


def run_steps(url: str, model: str, levels: list[int], step_s: float, settle_s: float,
              slo: SLO, stop_after_miss: bool = True,
              until: Callable[[list[StepStats]], bool] | None = None) -> list[StepStats]:
    """One step per level, each measured after `settle_s`; stops after the first SLO miss
    (`stop_after_miss`) or once `until(steps so far)` is true."""
    load = Load(url, model)
    steps: list[StepStats] = []
    try:
        for users in levels:
            started = time.monotonic()
            stats = step_stats(users, step_s, load.step(users, step_s, settle_s), slo)
            steps.append(stats)
            missed = violations(stats, slo)
            print(f"[plan] {users:>3} users: {stats.throughput_rps:6.2f} req/s, "
                  f"{stats.tokens_per_s:7.1f} tok/s, TTFT p95 {stats.ttft_p95_s * 1000:7.1f} "
                  f"ms, TPOT p95 {stats.tpot_p95_s * 1000:6.1f} ms, errors "
                  f"{stats.error_rate:.1%}, goodput {stats.goodput_rps:6.2f} req/s "
                  f"({stats.attainment:.1%} met every SLO) "
                  f"({time.monotonic() - started:.0f} s)"
                  + (f"  SLO missed: {'; '.join(missed)}" if missed else ""), flush=True)
            if (missed and stop_after_miss) or (until is not None and until(steps)):
                break
    finally:
        load.stop()
    return steps


def plot(steps: list[StepStats], slo: SLO, model: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s.throughput_rps for s in steps]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    a.plot(x, [s.ttft_p50_s * 1000 for s in steps], "o-", label="TTFT p50")
    a.plot(x, [s.ttft_p95_s * 1000 for s in steps], "o-", label="TTFT p95")
    a.axhline(slo.ttft_p95_s * 1000, color="red", ls="--", lw=1, label="SLO (p95)")
    b.plot(x, [s.tpot_p50_s * 1000 for s in steps], "o-", label="TPOT p50")
    b.plot(x, [s.tpot_p95_s * 1000 for s in steps], "o-", label="TPOT p95")
    b.axhline(slo.tpot_p95_s * 1000, color="red", ls="--", lw=1, label="SLO (p95)")
    for ax, what in ((a, "time to first token (ms)"), (b, "time per output token (ms)")):
        ax.set_xlabel("throughput of one replica (req/s)")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
        for s, xv in zip(steps, x):
            ax.annotate(str(s.users), (xv, ax.get_ylim()[0]), fontsize=7, color="grey")
    users = [s.users for s in steps]
    c.plot(users, x, "o-", label="throughput")
    c.plot(users, [s.goodput_rps for s in steps], "o-", label="goodput (met every SLO)")
    c.set_xlabel("concurrent users")
    c.set_ylabel("requests/s of one replica")
    c.legend(fontsize=8)
    fig.suptitle(f"Capacity of one '{model}' replica (numbers: concurrent users)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def html_report(report: dict[str, Any], png: Path) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{v}</td>" for v in (
            s["users"], f"{s['throughput_rps']:.2f}", f"{s['tokens_per_s']:.1f}",
            f"{s['ttft_p50_s'] * 1000:.0f}", f"{s['ttft_p95_s'] * 1000:.0f}",
            f"{s['tpot_p95_s'] * 1000:.1f}", f"{s['error_rate']:.1%}")) + "</tr>"
        for s in report["steps"])
    image = base64.b64encode(png.read_bytes()).decode()
    summary = "".join(f"<li>{k}: {v}</li>" for k, v in report["summary"].items())
    return (f"<html><head><meta charset='utf-8'><title>Sluice capacity plan</title></head>"
            f"<body><h1>Capacity plan: {report['model']}</h1><ul>{summary}</ul>"
            f"<img src='data:image/png;base64,{image}'/><table border=1 cellpadding=4>"
            "<tr><th>users</th><th>req/s</th><th>tok/s</th><th>TTFT p50 ms</th>"
            "<th>TTFT p95 ms</th><th>TPOT p95 ms</th><th>errors</th></tr>"
            f"{rows}</table></body></html>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="small")
    parser.add_argument("--profile", default=str(ROOT / "platform/profiles/local-cpu.yaml"),
                        help="Profile whose catalog holds the model's SLOs.")
    parser.add_argument("--users", default="1,2,4,6,8,12,16,24")
    parser.add_argument("--step-s", type=float, default=20)
    parser.add_argument("--settle-s", type=float, default=3)
    parser.add_argument("--gpu-hourly-usd", type=float, default=2.0)
    parser.add_argument("--target-rps", type=float, default=50.0)
    parser.add_argument("--headroom", type=float, default=0.2)
    parser.add_argument("--goodput-share", type=float, default=0.99,
                        help="Share of requests that must meet every SLO jointly (goodput "
                        "capacity).")
    parser.add_argument("--validate-url", default=None)
    parser.add_argument("--validate-replicas", type=int, default=2)
    parser.add_argument("--from-plan", type=Path, default=None,
                        help="Reuse the steps of an earlier plan.json (e.g. to validate "
                        "later, against another deployment) instead of running the ramp.")
    parser.add_argument("--out", type=Path, default=Path("bench-results/plan"))
    args = parser.parse_args()

    from sluice.schema.loading import load_platform_config

    config = load_platform_config(Path(args.profile), root=ROOT)
    slo = next(m.slo for m in config.catalog.models if m.name == args.model)
    levels = [int(u) for u in args.users.split(",")]
    print(f"[plan] {args.model} at {args.url}: steps {levels} x {args.step_s:.0f} s; SLO {slo}",
          flush=True)
    if args.from_plan:
        steps = [StepStats.from_dict(row)
                 for row in json.loads(args.from_plan.read_text())["steps"]]
    else:
        steps = run_steps(args.url, args.model, levels, args.step_s, args.settle_s, slo)
    best, bend = sustainable(steps, slo), knee(steps)
    summary: dict[str, Any] = {"slo": slo.model_dump()}
    good = goodput_capacity(steps, args.goodput_share)
    if good is None:
        summary["goodput"] = (f"none: under {args.goodput_share:.0%} of the first step's "
                              "requests met every SLO")
    else:
        low, high = good.attainment_interval()
        summary.update({
            "goodput_share": args.goodput_share, "goodput_users": good.users,
            "goodput_rps_per_replica": round(good.goodput_rps, 3),
            "goodput_attainment": round(good.attainment, 4),
            "goodput_attainment_ci95": [round(low, 4), round(high, 4)],
            "usd_per_1m_good_output_tokens": round(
                cost_per_million_tokens(args.gpu_hourly_usd, good.good_tokens_per_s), 4)})
    if best is None:
        summary["sustainable"] = "none: the first step already misses the SLO"
    else:
        summary.update({
            "sustainable_users": best.users,
            "sustainable_rps_per_replica": round(best.throughput_rps, 3),
            "sustainable_tokens_per_s_per_replica": round(best.tokens_per_s, 1),
            "knee_users": bend.users if bend else None,
            # the last step still met the SLOs: the limit lies beyond the ramp (a floor)
            "limit_found": best is not steps[-1],
            "target_rps": args.target_rps, "headroom": args.headroom,
            "replicas_for_target": replicas_needed(args.target_rps, best.throughput_rps,
                                                   args.headroom),
            "gpu_hourly_usd": args.gpu_hourly_usd,
            "usd_per_1m_output_tokens": round(
                cost_per_million_tokens(args.gpu_hourly_usd, best.tokens_per_s), 4),
        })
    report: dict[str, Any] = {"model": args.model, "url": args.url, "summary": summary,
                              "steps": [s.to_dict() for s in steps]}
    if best is not None and args.validate_url:
        n = args.validate_replicas
        print(f"[plan] validating: {n * best.users} users against {n} replicas at "
              f"{args.validate_url}", flush=True)
        measured = run_steps(args.validate_url, args.model, [n * best.users], args.step_s,
                             args.settle_s, slo, stop_after_miss=False)[0]
        predicted = n * best.throughput_rps
        report["validation"] = {
            "replicas": n, "users": n * best.users, "predicted_rps": round(predicted, 3),
            "measured_rps": round(measured.throughput_rps, 3),
            "measured_over_predicted": round(measured.throughput_rps / predicted, 3),
            "slo_violations": violations(measured, slo), "step": measured.to_dict()}
        print(f"[plan] validation: measured {measured.throughput_rps:.2f} req/s vs predicted "
              f"{predicted:.2f} ({measured.throughput_rps / predicted:.2f}x); SLO "
              f"{'met' if not violations(measured, slo) else violations(measured, slo)}",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.json").write_text(json.dumps(report, indent=2))
    plot(steps, slo, args.model, args.out / "plan.png")
    (args.out / "plan.html").write_text(html_report(report, args.out / "plan.png"))
    print(json.dumps(summary, indent=2))
    print(f"[plan] wrote {args.out}/plan.json, plan.png, plan.html")


if __name__ == "__main__":
    main()
