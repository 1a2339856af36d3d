"""`sluice tune`: Bayesian search (Optuna's TPE, with median pruning) over one model's engine
settings, scoring each trial by its goodput under the model's SLOs.

    sluice tune --model small --trials 12 --out bench-results/tune
    sluice tune --model small --slo ttft_p95_s=0.5,tpot_p95_s=0.05 --trials 12 --apply

Each trial deploys the model alone with the candidate settings (`sluice serve` of a profile
of its own, on ports of its own: a fresh engine, nothing left from the previous trial) and
runs the capacity planner's stepped load against it (`loadtests.plan.run_steps`: streaming
short chats, users = requests in flight). After each step the trial reports its best goodput
so far; from the third step on, Optuna's median pruner stops a trial whose goodput at a step
is below the median of earlier trials at the same step, and a trial's load also stops once
its goodput has passed its peak (`sluice.tuning.score.past_the_peak`; its best then stands
for the steps it did not run). A trial whose engine does not start fails
(its log's tail is in the report) and the search goes on.

Then, unless `--confirm-rounds 0`, the shipped settings and the best trial's are measured
again side by side, alternating (shipped, best, best, shipped, ...), so the goodput ratio is
from one run on one machine. `--apply` writes the winner into the profile's entry for the
model, with its provenance as a comment (`sluice.tuning.apply`), unless that re-measurement
found it no better than the shipped settings.

Writes tune.json (every trial, its steps and settings; the Pareto front of goodput against
TTFT p95; the side-by-side ratio) and tune.png.
"""

# ruff: noqa: I001 - the planner's import is first on purpose (below)
from __future__ import annotations

# first: Locust (through the planner) patches the standard library for gevent, which must
# happen before ssl and friends are imported by anything else
from loadtests.plan import run_steps

import argparse
import json
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loadtests import own_stack
from sluice.capacity.analysis import StepStats
from sluice.schema.loading import load_platform_config
from sluice.schema.platform import PlatformConfig
from sluice.schema.serving import SLO
from sluice.tuning.score import Score, past_the_peak, pareto_front, score
from sluice.tuning.space import EngineSettings, TuneSpace, suggest

ROOT = Path(__file__).resolve().parents[1]
PORT, REDIS_PORT = 8798, 6407


def log(message: str) -> None:
    print(f"[tune] {message}", flush=True)


class TrialFailed(RuntimeError):
    """A trial's engine did not start (the settings cannot run here)."""


def parse_slo(text: str, base: SLO) -> SLO:
    """`ttft_p95_s=0.5,tpot_p95_s=0.05` over the catalog's SLO."""
    if not text:
        return base
    fields: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        fields[key.strip()] = float(value)
    return SLO.model_validate({**base.model_dump(), **fields})


def trial_profile(tmp: Path, base: Path, config: PlatformConfig, model: str,
                  settings: EngineSettings | None) -> Path:
    """A profile that deploys `model` alone, one replica, with `settings` over its
    deployment (None: as the base profile ships it); no caches in front, so every request
    reaches the engine."""
    entry = config.catalog.get(model)
    single = {**entry.model_dump(mode="json", exclude_none=True),
              "source": config.model_source(entry), "failover": []}
    # the catalog must fill both tiers; the other one is a hosted model no request names
    # (a port nothing listens on), so the trial runs one engine only
    other = {"name": "tune-other-tier", "tier": "large" if entry.tier == "small" else "small",
             "context_length": entry.context_length,
             "description": "fills the tier a catalog requires; never asked in a tune",
             "provider": {"base_url": "http://127.0.0.1:9/v1", "model": "none"}}
    (tmp / "catalog.yaml").write_text(yaml.safe_dump({"models": [single, other]}))
    deployment = config.profile.models[model]
    if settings is not None:
        deployment = deployment.model_copy(
            update=settings.deployment_update(dict(deployment.engine_kwargs)))
    deployment = deployment.model_copy(update={"min_replicas": 1, "max_replicas": 1,
                                               "autoscaling": None})
    profile = yaml.safe_load(base.read_text())
    profile["catalog"] = str(tmp / "catalog.yaml")
    profile.pop("routing", None)
    profile["models"] = {model: deployment.model_dump(mode="json", exclude_none=True)}
    profile.setdefault("ingress", {})["auto_route"] = entry.tier
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {"enabled": False}
    profile["dashboard"] = {"enabled": False}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


class Runner:
    """Deploys one setting at a time and loads it: what every trial and confirm run does."""

    def __init__(self, args: argparse.Namespace, config: PlatformConfig, slo: SLO) -> None:
        self.args, self.config, self.slo = args, config, slo
        self.levels = [int(u) for u in args.users.split(",")]
        self.url = f"http://127.0.0.1:{args.port}"

    def measure(self, name: str, settings: EngineSettings | None,
                after_step: Callable[[list[StepStats]], bool] | None = None
                ) -> list[StepStats]:
        """Deploy, run the ladder until `after_step` says stop or the goodput passed its
        peak, stop the stack. TrialFailed if the stack does not come up."""
        work = Path(tempfile.mkdtemp(prefix=f"sluice-tune-{re.sub(r'[^A-Za-z0-9]+', '-', name)}-"))
        profile = trial_profile(work, Path(self.args.profile), self.config, self.args.model,
                                settings)
        started = time.monotonic()
        try:
            proc = own_stack.serve(profile, work / "serve.log", self.args.port,
                                   self.args.redis_port, self.args.ready_timeout_s)
        except SystemExit as exc:  # own_stack's way of saying the stack did not start
            raise TrialFailed(str(exc)[-1500:]) from None
        log(f"{name}: {settings.label() if settings else 'shipped settings'}: serving after "
            f"{time.monotonic() - started:.0f} s")
        try:
            def stop(steps: list[StepStats]) -> bool:
                # every step is reported (the pruner compares trials step by step) before
                # the trial may stop for having passed its peak
                pruned = bool(after_step and after_step(steps))
                return pruned or past_the_peak(steps)

            # past an SLO miss too: goodput can still grow while the p95 is over its bound
            return run_steps(self.url, self.args.model, self.levels, self.args.step_s,
                             self.args.settle_s, self.slo, stop_after_miss=False, until=stop)
        finally:
            own_stack.stop(proc, (self.args.port, self.args.redis_port))


def run_study(runner: Runner, space: TuneSpace, trials: int, seed: int
              ) -> tuple[Any, list[dict[str, Any]]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", study_name=f"sluice-tune-{runner.args.model}",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, trials)),
        # the first two steps are below any setting's saturation: no signal to prune on
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    records: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial, space)
        record: dict[str, Any] = {"number": trial.number, "settings": settings.model_dump(
            mode="json"), "label": settings.label(), "params": trial.params}
        records.append(record)
        started = time.monotonic()
        pruned = False

        def report(steps: list[StepStats]) -> bool:
            nonlocal pruned
            trial.report(score(steps).goodput_rps, len(steps) - 1)
            pruned = trial.should_prune()
            return pruned

        try:
            steps = runner.measure(f"trial {trial.number}", settings, report)
        except TrialFailed as exc:
            record.update(state="failed", error=str(exc), duration_s=time.monotonic() - started)
            log(f"trial {trial.number} failed: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise
        result = score(steps)
        if not pruned:  # past its peak: its best stands for the steps it did not run, so
            for step in range(len(steps), len(runner.levels)):  # later trials are compared
                trial.report(result.goodput_rps, step)  # with it there too
        record.update(state="pruned" if pruned else "complete", steps=[
            s.to_dict() for s in steps], duration_s=round(time.monotonic() - started, 1),
            **_score_fields(result))
        log(f"trial {trial.number} {record['state']}: goodput {result.goodput_rps:.2f} req/s "
            f"at {result.users} users (TTFT p95 {result.ttft_p95_s * 1000:.0f} ms), "
            f"{record['duration_s']:.0f} s")
        if pruned:
            raise optuna.TrialPruned()
        return result.goodput_rps

    study.optimize(objective, n_trials=trials, catch=(TrialFailed,))
    return study, records


def _score_fields(result: Score) -> dict[str, Any]:
    return {"goodput_rps": round(result.goodput_rps, 3),
            "ttft_p95_s": result.ttft_p95_s, "tpot_p95_s": result.tpot_p95_s,
            "goodput_users": result.users, "attainment": round(result.attainment, 4)}


def confirm(runner: Runner, best: EngineSettings, rounds: int) -> dict[str, Any]:
    """The shipped settings and the best, alternating, each measured `rounds` times."""
    runs: dict[str, list[float]] = {"shipped": [], "best": []}
    order: list[str] = []
    for i in range(rounds):
        order += ["shipped", "best"] if i % 2 == 0 else ["best", "shipped"]
    for i, which in enumerate(order):
        steps = runner.measure(f"confirm {i + 1}/{len(order)} ({which})",
                               best if which == "best" else None)
        runs[which].append(score(steps).goodput_rps)
        log(f"confirm {which}: goodput {runs[which][-1]:.2f} req/s")
    shipped, tuned = (sum(v) / len(v) for v in (runs["shipped"], runs["best"]))
    return {"rounds": rounds, "order": order, "goodput_rps": runs,
            "shipped_mean": round(shipped, 3), "best_mean": round(tuned, 3),
            "ratio": round(tuned / shipped, 3) if shipped else None}


def plot(records: list[dict[str, Any]], front: list[int], confirmed: dict[str, Any] | None,
         model: str, path: Path) -> None:
    """Goodput against TTFT p95 per trial (pruned ones at their last step), the Pareto front
    (trial numbers `front`), and the side-by-side re-measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for state, style in (("complete", "o"), ("pruned", "x")):
        rows = [r for r in records if r.get("state") == state]
        ax.plot([r["ttft_p95_s"] * 1000 for r in rows], [r["goodput_rps"] for r in rows],
                style, label=f"{state} trials", alpha=0.8)
        for r in rows:
            ax.annotate(str(r["number"]), (r["ttft_p95_s"] * 1000, r["goodput_rps"]),
                        fontsize=7, color="grey")
    pts = sorted((r for r in records if r["number"] in front), key=lambda r: r["goodput_rps"])
    ax.plot([r["ttft_p95_s"] * 1000 for r in pts], [r["goodput_rps"] for r in pts], "s-",
            color="red", lw=1, mfc="none", ms=11, label="Pareto front")
    if confirmed:
        ax.axhline(confirmed["shipped_mean"], color="black", ls="--", lw=1,
                   label=f"shipped settings, re-measured ({confirmed['shipped_mean']:.1f})")
        ax.axhline(confirmed["best_mean"], color="green", ls=":", lw=1,
                   label=f"best, re-measured ({confirmed['best_mean']:.1f})")
    ax.set_xlabel("TTFT p95 at the trial's best step (ms)")
    ax.set_ylabel("goodput (req/s meeting every SLO)")
    ax.set_title(f"sluice tune: '{model}' engine settings (numbers: trials)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def provenance(report: dict[str, Any]) -> str:
    best, slo = report["best"], report["slo"]
    lines = [(f"{report['finished']}: trial {best['number']} of {report['trials']} "
              f"({report['pruned']} pruned, {report['failed']} failed, "
              f"{report['elapsed_s'] / 60:.0f} min), goodput {best['goodput_rps']:.2f} req/s "
              f"at {best['goodput_users']} users under TTFT p95 <= {slo['ttft_p95_s']} s, "
              f"TPOT p95 <= {slo['tpot_p95_s']} s")]
    confirmed = report.get("confirm")
    if confirmed:
        lines.append(f"re-measured side by side: {confirmed['best_mean']:.2f} vs "
                     f"{confirmed['shipped_mean']:.2f} req/s with the settings before "
                     f"({confirmed['ratio']}x, {confirmed['rounds']} round(s))")
    lines.append(f"`{report['command']}`")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice tune", description="Bayesian search (Optuna TPE with pruning) over one "
        "model's engine settings, scoring goodput under its SLOs.")
    parser.add_argument("--model", default="small")
    parser.add_argument("--profile", default=str(ROOT / "platform/profiles/local-cpu.yaml"))
    parser.add_argument("--slo", default="", help="e.g. ttft_p95_s=0.5,tpot_p95_s=0.05 "
                        "(default: the catalog's SLO of the model)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--users", default="4,8,16,24,32",
                        help="the stepped load's concurrent users")
    parser.add_argument("--step-s", type=float, default=15)
    parser.add_argument("--settle-s", type=float, default=3)
    parser.add_argument("--confirm-rounds", type=int, default=1,
                        help="re-measure shipped vs best this many times each (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", type=Path, default=None, help="a YAML TuneSpace (default: "
                        "the device's, sluice.tuning.space)")
    parser.add_argument("--apply", action="store_true",
                        help="write the best settings into --profile, with their provenance")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--redis-port", type=int, default=REDIS_PORT)
    parser.add_argument("--ready-timeout-s", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path("bench-results/tune"))
    return parser


def _confirm(runner: Runner, report: dict[str, Any], rounds: int) -> None:
    """The side-by-side re-measurement into the report (a run that fails is said there)."""
    best = EngineSettings.model_validate(report["best"]["settings"])
    try:
        report["confirm"] = confirm(runner, best, rounds)
    except TrialFailed as exc:
        report["confirm_error"] = str(exc)
        log(f"side by side: a run did not start: {str(exc).splitlines()[0]}")
        return
    log(f"side by side: best {report['confirm']['best_mean']:.2f} vs shipped "
        f"{report['confirm']['shipped_mean']:.2f} req/s ({report['confirm']['ratio']}x)")


def _apply(args: argparse.Namespace, report: dict[str, Any]) -> None:
    confirmed = report.get("confirm")
    if report.get("confirm_error") or (confirmed and not (confirmed["ratio"] or 0) > 1):
        log("not applied: re-measured side by side, the best did not beat the shipped "
            f"settings ({confirmed['ratio'] if confirmed else 'no measurement'}x)")
        return
    from sluice.tuning.apply import apply_settings

    apply_settings(Path(args.profile), args.model,
                   EngineSettings.model_validate(report["best"]["settings"]),
                   provenance(report))
    log(f"applied to {args.profile} (models.{args.model})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_platform_config(Path(args.profile), root=ROOT)
    slo = parse_slo(args.slo, config.catalog.get(args.model).slo)
    space = (TuneSpace.model_validate(yaml.safe_load(args.space.read_text())) if args.space
             else TuneSpace.for_device(config.profile.device))
    runner = Runner(args, config, slo)
    command = "sluice tune " + shlex.join(argv if argv is not None else sys.argv[1:])
    log(f"{args.model}: {args.trials} trials, steps {runner.levels} x {args.step_s:.0f} s, "
        f"SLO {slo}; space {space.model_dump()}")
    started = time.monotonic()
    _, records = run_study(runner, space, args.trials, args.seed)
    scored = [r for r in records if r.get("state") == "complete"]
    front = pareto_front([(r["goodput_rps"], r["ttft_p95_s"]) for r in scored])
    report: dict[str, Any] = {
        "model": args.model, "profile": args.profile, "slo": slo.model_dump(),
        "space": space.model_dump(), "users": runner.levels, "step_s": args.step_s,
        "command": command, "trials": len(records),
        "pruned": sum(r.get("state") == "pruned" for r in records),
        "failed": sum(r.get("state") == "failed" for r in records),
        "records": records, "pareto": [scored[i]["number"] for i in front],
        # ties on goodput: the lower latency (the one on the Pareto front)
        "best": max(scored, key=lambda r: (r["goodput_rps"], -r["ttft_p95_s"]), default=None)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tune.json"
    path.write_text(json.dumps(report, indent=2))  # the search is kept whatever follows
    if report["best"] is not None and args.confirm_rounds > 0:
        _confirm(runner, report, args.confirm_rounds)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(json.dumps(report, indent=2))
    plot(records, report["pareto"], report.get("confirm"), args.model, args.out / "tune.png")
    log(f"wrote {path} and tune.png ({report['elapsed_s'] / 60:.1f} min)")
    if report["best"] is None:
        log("no trial completed: nothing to apply")
        return 1
    log(f"best: trial {report['best']['number']} ({report['best']['label']}): goodput "
        f"{report['best']['goodput_rps']:.2f} req/s")
    if args.apply:
        _apply(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
