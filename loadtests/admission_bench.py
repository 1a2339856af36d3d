"""Admission control under overload: a bounded queue (shed at once with 503) against Ray
Serve LLM's default (max_ongoing_requests 10^9: every request accepted and queued in the
engine), the same burst, the same machine, one after the other.

    python -m loadtests.admission_bench --burst 128 --max-tokens 256 --out bench-results/admission

Each variant is its own `sluice serve` (one ingress replica, `small` on one engine with
max_num_seqs 8): `bounded` holds max_ongoing_requests 8 on the engine and queues
max_queued_requests 8 at the ingress; `unbounded` holds 10^9 and queues without limit. A
burst of `--burst` concurrent chat requests (max_tokens fixed, ignore_eos) is sent, twice;
per request the status and latency; then the same burst to an unknown model (404, the
cheapest refusal there is), the floor any refusal costs here under that burst.

A burst of 128 requests at the same instant measures how fast one ingress replica's Python
gets through 128 connections at once. `--rate` adds the overload as a service meets it:
requests arriving one by one (Poisson, open loop) at `--rate` per second for `--duration`
seconds, far above what the engine serves, so the engine stays saturated and most arrivals
are shed; then the same arrivals to the unknown model, for the floor at that rate (the
bounded variant only: the unbounded one sheds nothing). Prints progress; writes
results.json and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests import own_stack

ROOT = Path(__file__).resolve().parents[1]
PORT, REDIS_PORT = 8796, 6405
VARIANTS = {"bounded": {"max_ongoing_requests": 8, "max_queued_requests": 8},
            "unbounded": {"max_ongoing_requests": 10**9, "max_queued_requests": -1}}


def _profile(tmp: Path, variant: dict[str, int]) -> Path:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile.pop("routing", None)
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    profile["dashboard"] = {"enabled": False}
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {"enabled": False}  # every request reaches the engine
    profile["engine_kwargs"] = {**profile["engine_kwargs"], "max_num_seqs": 8}
    profile["models"] = {**profile["models"],
                         "small": {"min_replicas": 1, "max_replicas": 1, **variant}}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _serve(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = own_stack.serve(profile, log, PORT, REDIS_PORT)
    return proc


_stop = own_stack.stop


def _body(model: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "count"}],
            "max_tokens": max_tokens, "ignore_eos": True}


async def _timed(client: httpx.AsyncClient, body: dict[str, Any], user: str
                 ) -> tuple[int, float, str]:
    """One chat request: its status, seconds, and error code (if any)."""
    started = time.perf_counter()
    r = await client.post("/v1/chat/completions", json={**body, "user": user})
    code = (r.json().get("error") or {}).get("code") or "" if r.status_code != 200 else ""
    return r.status_code, time.perf_counter() - started, code


async def _burst(n: int, max_tokens: int, model: str = "small"
                 ) -> list[tuple[int, float, str]]:
    body = _body(model, max_tokens)
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=600,
                                 limits=limits) as client:
        return list(await asyncio.gather(*(_timed(client, body, f"bench-{i}")
                                           for i in range(n))))


async def _sustained(rate: float, duration_s: float, max_tokens: int, model: str = "small",
                     seed: int = 7) -> list[tuple[int, float, str]]:
    """Open-loop Poisson arrivals: each request is sent at its time whether or not the
    earlier ones were answered (a closed loop would slow down with the server and hide
    its latency)."""
    rng = random.Random(seed)
    body = _body(model, max_tokens)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=600,
                                 limits=limits) as client:
        tasks, at, start = [], 0.0, time.perf_counter()
        while at < duration_s:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(_timed(client, body, f"rate-{len(tasks)}")))
            at += rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(results: list[tuple[int, float, str]]) -> dict[str, Any]:
    ok = [s for status, s, _ in results if status == 200]
    shed = [s for status, s, _ in results if status == 503]
    return {"requests": len(results), "ok": len(ok), "shed_503": len(shed),
            "other": len(results) - len(ok) - len(shed),
            "codes": sorted({c for _, _, c in results if c}),
            "ok_p50_s": _pct(ok, 0.5), "ok_p99_s": _pct(ok, 0.99), "ok_max_s": max(ok or [0]),
            "shed_p50_ms": None if not shed else _pct(shed, 0.5) * 1000,  # type: ignore[operator]
            "shed_p99_ms": None if not shed else _pct(shed, 0.99) * 1000,  # type: ignore[operator]
            "shed_mean_ms": statistics.fmean(shed) * 1000 if shed else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="also: open-loop arrivals per second (0: burst only)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of --rate arrivals")
    parser.add_argument("--out", default="bench-results/admission")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"burst": args.burst, "max_tokens": args.max_tokens,
                              "command": " ".join(["python -m loadtests.admission_bench",
                                                   *sys.argv[1:]]), "variants": {}}
    raw: dict[str, list[tuple[int, float, str]]] = {}
    for name, variant in VARIANTS.items():
        tmp = Path(tempfile.mkdtemp(prefix=f"sluice-admission-{name}-"))
        print(f"[admission] {name}: starting sluice serve ({variant})", flush=True)
        proc = _serve(_profile(tmp, variant), tmp / "serve.log")
        try:
            asyncio.run(_burst(8, args.max_tokens))  # warm-up
            rounds = []
            for i in range(args.rounds):
                results = asyncio.run(_burst(args.burst, args.max_tokens))
                rounds.append(_summary(results))
                raw.setdefault(name, []).extend(results)
                print(f"[admission] {name} round {i + 1}/{args.rounds}: {rounds[-1]}",
                      flush=True)
            # the floor: the same burst refused by the cheapest check there is (an unknown
            # model, 404 at parse time): what any refusal costs on this machine under it
            floor = [s for status, s, _ in asyncio.run(
                _burst(args.burst, args.max_tokens, model="no-such-model")) if status == 404]
            report["variants"][name] = {
                "settings": variant, "rounds": rounds, "all": _summary(raw[name]),
                "refused_404_p50_ms": (_pct(floor, 0.5) or 0) * 1000,
                "refused_404_p99_ms": (_pct(floor, 0.99) or 0) * 1000}
            print(f"[admission] {name}: the same burst refused with 404: p50 "
                  f"{report['variants'][name]['refused_404_p50_ms']:.0f} ms, p99 "
                  f"{report['variants'][name]['refused_404_p99_ms']:.0f} ms", flush=True)
            if args.rate and variant["max_queued_requests"] >= 0:
                report["variants"][name]["sustained"], sustained = _sustained_report(args)
                raw[f"{name}, {args.rate:g}/s"] = sustained
                print(f"[admission] {name}: {args.rate:g}/s for {args.duration:g} s: "
                      f"{report['variants'][name]['sustained']}", flush=True)
        finally:
            print(f"[admission] {name}: stopping", flush=True)
            _stop(proc)
    report["raw"] = raw  # (status, seconds, code) per request: the plot's data
    (out / "results.json").write_text(json.dumps(report, indent=2))
    _plot(raw, out / "admission.png", args.burst)
    print(json.dumps({k: v["all"] for k, v in report["variants"].items()}, indent=2))
    print(f"[admission] wrote {out}/results.json and {out}/admission.png")
    return 0


def _sustained_report(args: argparse.Namespace
                      ) -> tuple[dict[str, Any], list[tuple[int, float, str]]]:
    print(f"[admission] {args.rate:g} requests/s for {args.duration:g} s (open loop)",
          flush=True)
    results = asyncio.run(_sustained(args.rate, args.duration, args.max_tokens))
    floor = [s for status, s, _ in asyncio.run(_sustained(
        args.rate, args.duration, args.max_tokens, model="no-such-model")) if status == 404]
    return ({"rate_per_s": args.rate, "duration_s": args.duration, **_summary(results),
             "refused_404_p50_ms": (_pct(floor, 0.5) or 0) * 1000,
             "refused_404_p99_ms": (_pct(floor, 0.99) or 0) * 1000},
            results + [(404, s, "floor") for s in floor])


def _plot(raw: dict[str, list[tuple[int, float, str]]], path: Path, burst: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sustained = {k: v for k, v in raw.items() if "/s" in k}
    fig, axes = plt.subplots(1, 1 + bool(sustained), figsize=(7 + 6 * bool(sustained), 4),
                             squeeze=False)
    panels = [(axes[0][0], {k: v for k, v in raw.items() if k not in sustained},
               f"a burst of {burst} requests at once")]
    if sustained:
        panels.append((axes[0][1], sustained, "open-loop arrivals, engine saturated"))
    for ax, runs, title in panels:
        for name, results in runs.items():
            for status, style in ((200, "-"), (503, "--"), (404, ":")):
                xs = sorted(s for st, s, _ in results if st == status)
                if xs:  # each status's own CDF
                    ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], style,
                            label=f"{name}: {status} ({len(xs)})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (s, log)")
        ax.set_ylabel("share of its requests")
        ax.set_title(f"{title}: one small engine")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
