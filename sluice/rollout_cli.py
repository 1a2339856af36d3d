"""`sluice rollout`: start, follow and end rollouts through the ingress's admin API
(`/v1/admin/rollouts`), from any machine that reaches it. Split from sluice.cli, which adds
these commands to its parser."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sluice.schema.prompts import PREFIX as PROMPT  # how a rollout names a template

ACTIONS = ("pause", "resume", "promote", "abort")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
          ) -> int:
    import httpx

    headers = {}
    key = os.environ.get(args.admin_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        response = httpx.request(method, f"{args.url.rstrip('/')}/v1/admin/rollouts{path}",
                                 json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"sluice rollout: {args.url} did not answer: {exc}", file=sys.stderr)
        return 2
    try:
        data = response.json()
    except ValueError:
        data = {"error": {"message": response.text[:500]}}
    if response.status_code >= 400:
        message = (data.get("error") or {}).get("message", response.text[:500])
        print(f"sluice rollout: {response.status_code}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else _summary(data))
    return 0


def _summary(data: dict[str, Any]) -> str:
    """A rollout (or the list) in a few lines; --json prints everything."""
    if "rollouts" in data:
        lines = [_summary(r) for r in data["rollouts"]] or ["no rollouts"]
        served = ", ".join(f"{m} -> {v}" for m, v in data.get("serving", {}).items())
        return "\n".join(lines + ([f"serving: {served}"] if served else []))
    spec = data.get("spec", {})
    out = [f"{spec.get('model')} -> {data.get('candidate')} ({spec.get('kind')}, "
           f"{data.get('id')}): {data.get('status')}, candidate share "
           f"{data.get('share_percent')}%"
           + (f", shadow {data['shadow_percent']}%" if "shadow_percent" in data else "")]
    if data.get("reason"):
        out.append(f"  reason: {data['reason']}")
    for gate in (data.get("canary") or {}).get("gates", []):
        out.append(f"  {gate['gate']}: {gate['verdict']} ({gate['detail']})")
    arms = ((data.get("measured") or {}).get("arms") or {})
    for name, arm in arms.items():
        out.append(f"  {name} {arm['model']}: {arm['requests']} requests, "
                   f"{arm['errors']} errors, TTFT p95 {arm['ttft_p95_s']}")
    if data.get("shadow"):
        out.append(f"  shadow: {json.dumps(data['shadow'])}")
    if data.get("retired"):
        out.append(f"  {data['retired']}")
    return "\n".join(out)


def _cmd_start(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.prompt is None):
        print("sluice rollout start: name MODEL or --prompt TEMPLATE (one of them)",
              file=sys.stderr)
        return 2
    model = args.model if args.prompt is None else f"{PROMPT}{args.prompt}"
    body: dict[str, Any] = {"model": model, "to": args.to, "kind": args.kind}
    if args.steps:
        body["steps"] = [int(s) for s in args.steps.split(",")]
    if args.step_min is not None:
        body["step_s"] = args.step_min * 60
    if args.step_s is not None:
        body["step_s"] = args.step_s
    if args.max_step_min is not None:
        body["max_step_s"] = args.max_step_min * 60
    if args.percent is not None:
        body["percent"] = args.percent
    if args.split_by is not None:
        body["split_by"] = args.split_by
    gates = {k: v for k, v in {
        "min_requests": args.min_requests, "confidence": args.confidence,
        "error_margin": args.error_margin, "latency_quantile": args.quantile,
        "ttft_max_ratio": args.ttft_ratio, "tpot_max_ratio": args.tpot_ratio,
        "min_agreement": args.min_agreement, "quality_sample": args.quality_sample,
        "min_pairs": args.min_pairs}.items()
        if v is not None}
    if gates:
        body["gates"] = gates
    return _call(args, "POST", "", body)


def _cmd_status(args: argparse.Namespace) -> int:
    return _call(args, "GET", f"/{args.model}" if args.model else "")


def _cmd_action(args: argparse.Namespace) -> int:
    return _call(args, "POST", f"/{args.model}/{args.rollout_command}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `rollout start|status|pause|resume|promote|abort` to the `sluice` parser."""
    rollout = sub.add_parser("rollout", help="canary, A/B and shadow rollouts of the "
                             "variants of a model, a cascade route or a prompt template "
                             "(prompt:NAME)").add_subparsers(dest="rollout_command", required=True)

    def common(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--url", default=os.environ.get("SLUICE_URL", "http://127.0.0.1:8000"),
                         help="the platform's address (default $SLUICE_URL or "
                         "http://127.0.0.1:8000)")
        cmd.add_argument("--admin-key-env", default="SLUICE_ADMIN_KEY",
                         help="environment variable holding an admin key (needed where the "
                         "profile requires keys)")
        cmd.add_argument("--timeout", type=float, default=30.0)
        cmd.add_argument("--json", action="store_true", help="print the whole answer")

    start = rollout.add_parser("start", help="start a rollout of MODEL (a model, a cascade "
                               "route, or prompt:NAME) to its variant MODEL@TO")
    start.add_argument("model", nargs="?")
    start.add_argument("--prompt", help="a prompt template's rollout: the same as MODEL "
                       "prompt:PROMPT (status, pause, ... then name it prompt:PROMPT)")
    start.add_argument("--to", required=True, help="the variant's label (catalog model or "
                       "route MODEL@TO)")
    start.add_argument("--kind", choices=("canary", "ab", "shadow"), default="canary")
    start.add_argument("--steps", help="canary: percent at each step, e.g. 5,10,25,50,100")
    start.add_argument("--step-min", type=float, help="canary: shortest step, in minutes")
    start.add_argument("--step-s", type=float, help="canary: shortest step, in seconds")
    start.add_argument("--max-step-min", type=float, help="canary: an undecided step rolls "
                       "back after this many minutes")
    start.add_argument("--percent", type=float, help="ab: the candidate's share; shadow: "
                       "the share of requests copied to it")
    start.add_argument("--split-by", choices=("user", "key", "tenant"),
                       help="canary and ab: who stays in one arm (default: the profile's "
                       "rollouts.sticky_header / sticky_key)")
    start.add_argument("--min-requests", type=int, help="gates: requests per variant and "
                       "step before any gate decides")
    start.add_argument("--confidence", type=float)
    start.add_argument("--error-margin", type=float)
    start.add_argument("--quantile", type=float, help="gates: latency quantile compared")
    start.add_argument("--ttft-ratio", type=float)
    start.add_argument("--tpot-ratio", type=float)
    start.add_argument("--min-agreement", type=float, help="quality gate: the least share of "
                       "the canary's answers agreeing with the baseline's on the same request")
    start.add_argument("--quality-sample", type=float, help="quality gate: the share of the "
                       "canary's requests also asked of the baseline")
    start.add_argument("--min-pairs", type=int, help="quality gate: compared pairs per step "
                       "before it decides")
    common(start)
    start.set_defaults(func=_cmd_start)
    status = rollout.add_parser("status", help="where MODEL's rollout stands (all without "
                                "MODEL)")
    status.add_argument("model", nargs="?")
    common(status)
    status.set_defaults(func=_cmd_status)
    for action in ACTIONS:
        cmd = rollout.add_parser(action, help=f"{action} MODEL's rollout")
        cmd.add_argument("model")
        common(cmd)
        cmd.set_defaults(func=_cmd_action)
