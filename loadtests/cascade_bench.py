"""What a judged cascade costs in latency: streamed TTFT and total time per route, same run.

    python -m loadtests.cascade_bench --rounds 30 --out bench-results/cascade

Starts `sluice serve` with the shipped routes plus three benchmark routes on the same two
demo models, then sends the same streamed /v1/completions requests in turn to:
- `small`: the model directly (no cascade);
- `bench-direct`: a route with no stages (route-only streaming path);
- `bench-logprob`: the small model's answer buffered and judged by its own log-probabilities
  (threshold 0: every answer accepted, so only buffering + judging is measured);
- `bench-llm`: buffered and judged by the large model (one extra engine call);
- `auto`: the shipped calibrated route (pre-router + answer-checks judge; some requests
  escalate, see the route split printed at the end).
Requests alternate between the routes so the machine's slow spells hit all of them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from loadtests.cache_bench import pct
from loadtests.sse_client import timed_completion
from sluice.schema.loading import load_routing_config

ROOT = Path(__file__).resolve().parents[1]
MANUAL = {"method": "manual", "reason": "benchmark: accept every answer, so the figure is "
          "the cost of buffering and judging alone"}
PROMPTS = [
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
     "in May. How many clips did Natalia sell altogether in April and May?"),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
     "babysitting. How much did she earn?"),
    ("James writes a 3-page letter to 2 different friends twice a week. How many pages does "
     "he write a year?"),
    "Write a short greeting for a birthday card.",
]
MODELS = ["small", "bench-direct", "bench-logprob", "bench-llm", "auto"]


def _bench_config(tmp: Path, port: int) -> Path:
    shipped = load_routing_config(ROOT / "platform/routing/routes.yaml").portable_routes()
    pair = {"small": "small", "large": "large"}
    routes = [*shipped,
              {"name": "bench-direct", **pair},
              {"name": "bench-logprob", **pair,
               "judge": {"kind": "logprob", "threshold": 0.0, "timeout_ms": 60000,
                         "provenance": MANUAL}},
              {"name": "bench-llm", **pair,
               "judge": {"kind": "llm", "judge_model": "large", "threshold": 0.0,
                         "timeout_ms": 60000, "provenance": MANUAL}}]
    (tmp / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}, sort_keys=False))
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile.update(catalog=str(ROOT / "platform/catalog.yaml"),
                   routing=str(tmp / "routes.yaml"))
    profile["ingress"]["port"] = port
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return tmp / "profile.yaml"


def _wait_ready(base: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"not ready within {timeout_s:.0f} s")


async def _run(base: str, rounds: int, max_tokens: int) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODELS}
    url = f"{base}/v1/completions"
    async with httpx.AsyncClient(timeout=300) as client:
        for model in MODELS:  # warm-up: first calls load the embedder, tokenizers, kernels
            await timed_completion(client, url, model, PROMPTS[0], max_tokens)
        for i in range(rounds):
            prompt = PROMPTS[i % len(PROMPTS)]
            order = MODELS[i % len(MODELS):] + MODELS[:i % len(MODELS)]
            for model in order:
                t = await timed_completion(client, url, model, prompt, max_tokens)
                if not t.ok:
                    raise RuntimeError(f"{model}: HTTP {t.status}")
                samples[model].append({"ttft_s": t.ttft_s, "total_s": t.total_s})
            print(f"[cascade-bench] round {i + 1}/{rounds}", file=sys.stderr, flush=True)
    return samples


def _summary(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for model, rows in samples.items():
        ttft = [r["ttft_s"] * 1000 for r in rows]
        total = [r["total_s"] * 1000 for r in rows]
        out[model] = {"ttft_p50_ms": pct(ttft, 0.5), "ttft_p95_ms": pct(ttft, 0.95),
                      "total_p50_ms": pct(total, 0.5), "total_p95_ms": pct(total, 0.95)}
    base = out["bench-direct"]["ttft_p50_ms"]
    for row in out.values():
        row["ttft_p50_vs_direct"] = row["ttft_p50_ms"] / base
    return out


def _plot(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [summary[n]["ttft_p50_ms"] for n in names], 0.4,
           label="TTFT p50")
    ax.bar([i + 0.2 for i in x], [summary[n]["total_p50_ms"] for n in names], 0.4,
           label="total p50")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms (streamed, 32 tokens)")
    ax.set_title("Cascade latency by route (demo models, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8310)
    parser.add_argument("--redis-port", type=int, default=6410)
    parser.add_argument("--out", default="bench-results/cascade")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sluice-cascade-bench-"))
    profile = _bench_config(tmp, args.port)
    base = f"http://127.0.0.1:{args.port}"
    log = (out / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "--profile",
                             str(profile), "--redis-port", str(args.redis_port),
                             "--no-dashboard"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        print("[cascade-bench] starting sluice serve ...", file=sys.stderr, flush=True)
        _wait_ready(base, proc, 900)
        samples = asyncio.run(_run(base, args.rounds, args.max_tokens))
        stats = httpx.get(f"{base}/v1/routing/stats", timeout=10).json()["routes"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = _summary(samples)
    result = {"summary": summary, "auto_routes": stats["auto"]["routes"],
              "rounds": args.rounds, "max_tokens": args.max_tokens, "samples": samples}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    _plot(summary, out / "cascade_latency.png")
    print(json.dumps({"summary": summary, "auto_routes": result["auto_routes"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
