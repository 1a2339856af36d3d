"""Speculative decoding and chunked prefill on the live engines, each against the same
engine without it: one `sluice serve`, one run, the same machine.

    python -m loadtests.engine_options_bench --out bench-results/engine-options

The stack serves `small` and variants of it on the same weights, each its own engine,
called by name (`small@ngram`): `ngram` speculates by prompt lookup (3 tokens, n-grams of
2-4); `chunk256` prefills in chunks of at most 256 tokens per engine step; `whole` takes a
2,048-token step budget, so a prompt of the whole context is prefilled in one step, as
without chunking. The catalog's `large` (the same weights) only fills the large tier.

- **Speculation**: vLLM's own `vllm bench serve` (the client nobody here wrote) against
  `small` and `small@ngram`, at concurrency 1, 4 and 16, on two workloads: `copy` asks to
  copy a real answer (GSM8K reference answers, `../shared/data/routing`) so the output can
  repeat the prompt, `random` is vLLM's random-token prompts. Order alternates per cell.
- **Chunked prefill**: four streaming chat users (short prompts, 96 tokens each, one
  request after another) while a fifth sends prompts of ~1,800 tokens every 3 s; per
  variant the chat users' inter-token gaps (p50, p99, max) and the long prompts' TTFT.

The demo models have random weights: what their greedy output repeats is not what a real
model's would, so a speculation figure here says what the option costs and whether it
serves, not what it saves on a real model. On a GPU machine, the same run with real weights:

    python -m loadtests.engine_options_bench --profile platform/profiles/gpu-cluster.yaml \
        --model-source <a local model directory or hub id> --out bench-results/engine-options-gpu

Prints progress; writes results.json and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests import own_stack
from loadtests.vllm_bench_compare import run_cell, serve_argv

ROOT = Path(__file__).resolve().parents[1]
PORT, REDIS_PORT = 8797, 6406
URL = f"http://127.0.0.1:{PORT}"
SPEC_MODELS = ("small", "small@ngram")
CHUNK_MODELS = ("small@whole", "small@chunk256")
VARIANTS: dict[str, dict[str, Any]] = {
    "ngram": {"speculative": {"method": "ngram", "num_speculative_tokens": 3,
                              "prompt_lookup_min": 2, "prompt_lookup_max": 4}},
    "chunk256": {"chunked_prefill": {"enabled": True, "max_num_batched_tokens": 256}},
    "whole": {"chunked_prefill": {"enabled": True, "max_num_batched_tokens": 2048}},
}
GSM8K = Path(ROOT.parent / "shared/data/routing/gsm8k_pairs.jsonl")


def log(message: str) -> None:
    print(f"[engine-options] {message}", flush=True)


def write_profile(tmp: Path, base: Path, source: str) -> Path:
    """`base` with a catalog of `small` (weights from `source`) and its variants."""
    small = {"source": source, "tier": "small", "context_length": 2048, "demo": True,
             "pricing": {"mode": "tokens", "tokens": {"input_per_1m": 0.1,
                                                      "output_per_1m": 0.2}}}
    catalog = {"models": [{"name": "small", **small},
                          *({"name": f"small@{v}", **small} for v in VARIANTS),
                          {"name": "large", **small, "tier": "large"}]}
    (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    profile = yaml.safe_load(base.read_text())
    profile["catalog"] = str(tmp / "catalog.yaml")
    profile.pop("routing", None)
    one = {"min_replicas": 1, "max_replicas": 1, "max_queued_requests": -1}
    profile["models"] = {"small": one, "large": one,
                         **{f"small@{v}": {**one, **o} for v, o in VARIANTS.items()}}
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {"enabled": False}
    profile["dashboard"] = {"enabled": False}
    profile["engine_kwargs"]["max_num_seqs"] = 16
    profile["engine_kwargs"]["enable_prefix_caching"] = False  # every prefill computed
    if profile.get("device", "cpu") == "cpu":
        profile["placement_bundles"] = [{"CPU": 0.5}]  # five engines in 4 logical CPUs
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def copy_dataset(path: Path, n: int = 64) -> Path:
    """In ShareGPT's shape (vLLM's loader for it needs no pandas, its custom one does)."""
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    path.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "Copy this answer exactly, word for word:\n\n"
                                   f"{row['strong_response']}\n\nCopy:\n"},
        {"from": "gpt", "value": row["strong_response"]}]} for row in rows]))
    return path


def speculation(out: Path, concurrencies: list[int], tokenizer: str) -> list[dict[str, Any]]:
    datasets = {
        "copy": ["--dataset-name", "sharegpt", "--dataset-path",
                 str(copy_dataset(out / "copy.json")), "--sharegpt-output-len", "64"],
        "random": ["--dataset-name", "random", "--random-input-len", "128",
                   "--random-output-len", "64"]}
    rows = []
    for dataset, args in datasets.items():
        for i, concurrency in enumerate(concurrencies):
            prompts = 12 if concurrency == 1 else 3 * concurrency
            order = SPEC_MODELS if i % 2 == 0 else tuple(reversed(SPEC_MODELS))
            for model in order:
                name = f"{dataset}-c{concurrency}-{model.replace('@', '-')}"
                argv = serve_argv(URL, model, tokenizer, args, concurrency, prompts,
                                  max(2, concurrency), out / "runs", name)
                data = run_cell(argv, out / "runs" / f"{name}.json", 900)
                row = {"part": "speculation", "dataset": dataset, "concurrency": concurrency,
                       "model": model, **{k: data.get(k) for k in (
                           "completed", "failed", "output_throughput", "median_tpot_ms",
                           "p99_tpot_ms", "median_itl_ms", "p99_itl_ms", "median_ttft_ms")}}
                rows.append(row)
                log(f"{name}: {row['output_throughput']:.1f} out tok/s, TPOT p50 "
                    f"{row['median_tpot_ms']:.1f} ms, ITL p99 {row['p99_itl_ms']:.1f} ms, "
                    f"failed {row['failed']}")
    return rows


async def _chat_user(client: httpx.AsyncClient, model: str, until: float,
                     gaps: list[float]) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 96, "ignore_eos": True, "temperature": 0, "stream": True}
    while time.perf_counter() < until:
        last = None
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers={"cache-control": "no-store"}) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if not any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                    continue
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now


async def _long_prompts(client: httpx.AsyncClient, model: str, until: float,
                        ttfts: list[float], every_s: float) -> None:
    text = " ".join(["word"] * 1800)  # 1,800 tokens of the demo tokenizer
    i = 0
    while time.perf_counter() < until:
        started = time.perf_counter()
        r = await client.post("/v1/completions", headers={"cache-control": "no-store"},
                              json={"model": model, "prompt": f"{i} {text}", "max_tokens": 1})
        r.raise_for_status()
        ttfts.append(time.perf_counter() - started)
        i += 1
        await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - started)))


async def _mixed(model: str, duration_s: float, users: int, every_s: float
                 ) -> tuple[list[float], list[float]]:
    gaps: list[float] = []
    ttfts: list[float] = []
    async with httpx.AsyncClient(base_url=URL, timeout=300) as client:
        until = time.perf_counter() + duration_s
        await asyncio.gather(*(_chat_user(client, model, until, gaps) for _ in range(users)),
                             _long_prompts(client, model, until, ttfts, every_s))
    return gaps, ttfts


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def chunked(duration_s: float, rounds: int) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    rows, gaps_by_model = [], {}
    for r in range(rounds):
        for model in CHUNK_MODELS if r % 2 == 0 else tuple(reversed(CHUNK_MODELS)):
            gaps, ttfts = asyncio.run(_mixed(model, duration_s, 4, 3.0))
            gaps_by_model.setdefault(model, []).extend(gaps)
            row = {"part": "chunked_prefill", "model": model, "round": r + 1,
                   "gaps": len(gaps), "itl_p50_ms": _pct(gaps, 0.5) * 1000,
                   "itl_p99_ms": _pct(gaps, 0.99) * 1000,
                   "itl_p999_ms": _pct(gaps, 0.999) * 1000, "itl_max_ms": max(gaps) * 1000,
                   "gaps_over_50ms": sum(g > 0.05 for g in gaps),
                   "long_prompts": len(ttfts), "long_ttft_p50_s": _pct(ttfts, 0.5),
                   "long_ttft_max_s": max(ttfts)}
            rows.append(row)
            log(f"{model} round {r + 1}: chat ITL p50 {row['itl_p50_ms']:.0f} ms, p99 "
                f"{row['itl_p99_ms']:.0f} ms, p99.9 {row['itl_p999_ms']:.0f} ms, max "
                f"{row['itl_max_ms']:.0f} ms, {row['gaps_over_50ms']} gaps over 50 ms; "
                f"{len(ttfts)} long prompts, TTFT p50 {row['long_ttft_p50_s']:.2f} s")
    return rows, gaps_by_model


def plot(rows: list[dict[str, Any]], gaps: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for (dataset, model), style in zip(
            [(d, m) for d in ("copy", "random") for m in SPEC_MODELS], ("-o", "--o", "-s", "--s"),
            strict=True):
        cells = [r for r in rows if r.get("dataset") == dataset and r["model"] == model]
        left.plot([r["concurrency"] for r in cells], [r["output_throughput"] for r in cells],
                  style, label=f"{dataset}: {model}")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrency")
    left.set_ylabel("output tokens/s")
    left.set_title("speculation (ngram) vs none: vllm bench serve")
    left.legend(fontsize=8)
    for model, values in gaps.items():  # the tail: the share of gaps longer than x
        xs = sorted(v * 1000 for v in values)
        right.step(xs, [1 - i / len(xs) for i in range(len(xs))], where="post", label=model)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("chat users' inter-token gap (ms, log)")
    right.set_ylabel("share of gaps longer (log)")
    right.set_title("while ~1,800-token prompts arrive every 3 s")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--mixed-s", type=float, default=30.0,
                        help="seconds of the mixed workload per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=("speculation", "chunked"))
    parser.add_argument("--profile", type=Path, default=ROOT / "platform/profiles/local-cpu.yaml",
                        help="the profile the stack is derived from (a GPU one: the GPU run)")
    parser.add_argument("--model-source", default=str(ROOT / "models/demo/small"),
                        help="weights of small and its variants (a path or a hub id)")
    parser.add_argument("--out", default="bench-results/engine-options")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sluice-engine-options-"))
    log(f"starting sluice serve with {', '.join(['small', *SPEC_MODELS[1:], *CHUNK_MODELS])}")
    proc = own_stack.serve(write_profile(tmp, args.profile, args.model_source), tmp / "serve.log",
                           PORT, REDIS_PORT, 900)
    rows: list[dict[str, Any]] = []
    gaps: dict[str, list[float]] = {}
    earlier = out / "results.json"
    if args.only and earlier.exists():  # keep the other part's rows of an earlier run
        kept = "chunked_prefill" if args.only == "speculation" else "speculation"
        rows += [r for r in json.loads(earlier.read_text())["rows"] if r["part"] == kept]

    def save() -> None:  # after each part: a later failure keeps what was measured
        report = {"command": " ".join(["python -m loadtests.engine_options_bench",
                                       *sys.argv[1:]]),
                  "variants": VARIANTS, "rows": rows,
                  "chunked_summary": {m: {"itl_p99_ms": _pct(g, 0.99) * 1000,
                                          "itl_p50_ms": statistics.median(g) * 1000}
                                      for m, g in gaps.items() if g}}
        (out / "results.json").write_text(json.dumps(report, indent=2))

    try:
        if args.only != "chunked":
            rows += speculation(out, [int(c) for c in args.concurrency.split(",")],
                                args.model_source)
            save()
        if args.only != "speculation":
            chunk_rows, gaps = chunked(args.mixed_s, args.rounds)
            rows += chunk_rows
            save()
    finally:
        log("stopping")
        own_stack.stop(proc)
    plot(rows, gaps, out / "engine-options.png")
    log(f"wrote {out}/results.json and {out}/engine-options.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
