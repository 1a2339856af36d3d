"""`sluice route`: the cascade's offline tools (evaluate routers and judges on labeled
pairs, calibrate a route's thresholds, measure each model's quality per task type). Split
from sluice.cli, which adds these commands to its parser."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cmd_route_eval(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sluice.router.dataset import load_pairs
    from sluice.router.evaluate import EvalSettings, evaluate
    from sluice.router.features import MemoEmbedder, MiniLMEmbedder
    from sluice.router.report import write_report
    from sluice.router.scorers import AnswerChecksJudge, LearnedQualityJudge, PromptRouter

    queries = load_pairs(Path(args.data))
    print(f"[route eval] {len(queries)} queries from {args.data}; embedding with MiniLM ...",
          file=sys.stderr, flush=True)
    embedder = MemoEmbedder(MiniLMEmbedder(), REPO_ROOT / ".cache" / "embeddings")
    embedder.warm([q.prompt for q in queries] + [q.small_answer or "" for q in queries])
    factories = {
        "prompt-router": lambda: PromptRouter(embedder),
        "learned-judge": lambda: LearnedQualityJudge(embedder),
        "answer-checks-judge": lambda: AnswerChecksJudge(embedder),
    }
    settings = EvalSettings(seeds=args.seeds, test_fraction=args.test_fraction,
                            bootstrap=args.bootstrap, price_ratio=args.price_ratio,
                            target_share=args.target_share)
    report = evaluate(queries, factories, settings,
                      progress=lambda m: print(f"[route eval] {m}", file=sys.stderr, flush=True))
    print(write_report(report, Path(args.out)))
    print(f"[route eval] wrote {args.out}/report.json, report.md, quality_vs_cost.png",
          file=sys.stderr)
    return 0


class _PlainDumper(__import__("yaml").SafeDumper):
    """YAML without anchors/aliases: each stage's provenance is written out in full."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _cmd_route_quality(args: argparse.Namespace) -> int:
    import yaml

    from sluice.router.quality import measure, task_of
    from sluice.schema.artifact_hash import sha256_file
    from sluice.schema.routing import RoutingConfig

    config_path = Path(args.config)
    out = Path(args.out) if args.out else config_path.parent / "artifacts" / "quality.yaml"
    data = {task_of(Path(d)): Path(d) for d in args.data}
    try:
        document = measure(data, args.small, args.large)
    except (OSError, ValueError) as exc:
        print(f"sluice route quality: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Written by `sluice route quality`: each model's mean quality per task "
                   "type on the labeled data.\n"
                   + yaml.dump(document, Dumper=_PlainDumper, sort_keys=False))
    existing = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
    selections = existing.get("selections", [])
    current = next((s for s in selections if s.get("name") == args.selection), None)
    if current is None:
        current = {"name": args.selection, "candidates": [args.small, args.large],
                   "task": next(iter(data))}
        selections.append(current)
    rel = os.path.relpath(out.resolve(), config_path.parent.resolve())
    current["quality"] = {"path": rel, "sha256": sha256_file(out)}
    config = {**existing, "selections": selections}
    RoutingConfig.model_validate({**config, "base_dir": config_path.parent})
    config_path.write_text(
        "# Written by `sluice route calibrate` and `sluice route quality`; numbers carry "
        "their provenance.\n" + yaml.dump(config, Dumper=_PlainDumper, sort_keys=False))
    print(yaml.safe_dump(document["tasks"], sort_keys=False), end="")
    print(f"[route quality] wrote {out} and selection '{args.selection}' in {config_path}",
          file=sys.stderr)
    return 0


def _cmd_route_calibrate(args: argparse.Namespace) -> int:
    import os

    import yaml

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sluice.router.calibrate import CalibrationSpec, calibrate
    from sluice.router.dataset import load_pairs
    from sluice.router.features import MemoEmbedder, MiniLMEmbedder
    from sluice.schema.routing import RoutingConfig

    config_path = Path(args.config)
    spec = CalibrationSpec(
        data=Path(args.data), target=args.target, route=args.route, small=args.small,
        large=args.large, judge=None if args.judge == "none" else args.judge,
        pre_router_share=args.pre_router_share, price_ratio=args.price_ratio,
        test_fraction=args.test_fraction, seed=args.seed)
    try:
        spec.parsed_target()
        queries = load_pairs(spec.data)
    except (OSError, ValueError) as exc:
        print(f"sluice route calibrate: {exc}", file=sys.stderr)
        return 2
    print(f"[route calibrate] {len(queries)} queries; fitting '{spec.route}' for "
          f"{spec.target} ...", file=sys.stderr, flush=True)
    embedder = MemoEmbedder(MiniLMEmbedder(), REPO_ROOT / ".cache" / "embeddings")
    embedder.warm([q.prompt for q in queries] + [q.small_answer or "" for q in queries])
    artifacts = Path(args.artifacts) if args.artifacts else config_path.parent / "artifacts"
    try:
        route = calibrate(queries, spec, embedder, artifacts, config_path.parent)
    except ValueError as exc:  # no responses to fit a judge on, one-label data, ...
        print(f"sluice route calibrate: {exc}", file=sys.stderr)
        return 2
    existing = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
    routes = [r for r in existing.get("routes", []) if r.get("name") != spec.route]
    old = next((r for r in existing.get("routes", []) if r.get("name") == spec.route), {})
    route["shadow"] = {**old.get("shadow", {}),
                       **({"fraction": args.shadow_fraction} if args.shadow_fraction else {})}
    document = {**existing, "routes": [*routes, route]}  # selections etc. kept
    RoutingConfig.model_validate({**document, "base_dir": config_path.parent})
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        "# Written by `sluice route calibrate` and `sluice route quality`; numbers carry "
        "their provenance.\n"
        + yaml.dump(document, Dumper=_PlainDumper, sort_keys=False))
    stage = route.get("judge") or route["pre_router"]
    print(yaml.safe_dump({"calibration": stage["provenance"]["calibration"],
                          "held_out": stage["provenance"]["held_out"]}, sort_keys=False))
    print(f"[route calibrate] wrote {config_path}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `route eval|calibrate|quality` to the `sluice` parser's subcommands."""
    route = sub.add_parser("route", help="cascade routing tools").add_subparsers(
        dest="route_command", required=True
    )
    ev = route.add_parser("eval", help="offline evaluation of routers and judges")
    ev.add_argument("--data", required=True, help="labeled pair file (JSONL, RouteLLM schema)")
    ev.add_argument("--out", default="bench-results/routing")
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--test-fraction", type=float, default=0.5)
    ev.add_argument("--bootstrap", type=int, default=200)
    ev.add_argument("--price-ratio", type=float, default=20.0,
                    help="cost of a large-model call / a small-model call")
    ev.add_argument("--target-share", type=float, default=0.5,
                    help="large-call share the calibrated threshold aims at")
    ev.set_defaults(func=_cmd_route_eval)
    cal = route.add_parser("calibrate", help="fit a route's thresholds and write its config")
    cal.add_argument("--data", required=True, help="labeled pair file (JSONL, RouteLLM schema)")
    cal.add_argument("--target", required=True,
                     help="large_share=S | quality=Q (x always-large) | cost=C (x always-large)")
    cal.add_argument("--config",
                     default=str(REPO_ROOT / "platform" / "routing" / "routes.yaml"),
                     help="routing config to write (the route is replaced, others kept)")
    cal.add_argument("--artifacts", default="", help="folder for fitted classifiers "
                     "(default: artifacts/ next to the config)")
    cal.add_argument("--route", default="auto")
    cal.add_argument("--small", default="small")
    cal.add_argument("--large", default="large")
    cal.add_argument("--judge", default="answer-checks",
                     choices=["answer-checks", "learned", "none"])
    cal.add_argument("--pre-router-share", type=float, default=0.0,
                     help="share of prompts the pre-router sends straight to large")
    cal.add_argument("--shadow-fraction", type=float, default=0.0)
    cal.add_argument("--price-ratio", type=float, default=20.0)
    cal.add_argument("--test-fraction", type=float, default=0.5)
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=_cmd_route_calibrate)
    qual = route.add_parser("quality", help="measure each model's quality per task type and "
                            "point a selection route at it")
    qual.add_argument("--data", action="append", required=True,
                      help="labeled pair file, one per task type (repeat); the task is the "
                      "file's name without _pairs")
    qual.add_argument("--config",
                      default=str(REPO_ROOT / "platform" / "routing" / "routes.yaml"),
                      help="routing config whose selection is updated (others kept)")
    qual.add_argument("--out", default="", help="quality file (default: "
                      "artifacts/quality.yaml next to the config)")
    qual.add_argument("--selection", default="cheapest",
                      help="selection route to point at it (created if missing)")
    qual.add_argument("--small", default="small")
    qual.add_argument("--large", default="large")
    qual.set_defaults(func=_cmd_route_quality)
