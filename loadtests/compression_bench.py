"""Prompt compression, measured: how often the answer survives, and what it saves live.

    python -m loadtests.compression_bench --out bench-results/compression

1. **Answer survival** (no LLM needed): SQuAD v1.1 dev questions with contexts of 700+ words
   (`loadtests/compression_data.py`). Each context is compressed for its question at ratios
   0.3-0.8 by `relevance` and `salience` (`sluice.compression`), by random sentence dropping
   and by truncation (keeping the start); the score is the share of questions whose gold
   answer span is still in the compressed text, verbatim. Also per answer kind (with a digit
   or not) and on short contexts (the question's own paragraph, ~120 words). Each sentence is
   measured in the `small` model's tokens. The methods' weights were set before this was run
   (no tuning on it); the figures are given on two halves split by article as well, to show
   how much they move.
   Where it hurts, math: GSM8K word problems (`../shared/data/routing`), the last sentence
   the question, the rest the context; the share of problems whose every number survives.
   And what compressing one request costs (MiniLM on every sentence, no memo).
2. **Live** (`--live`): `sluice serve` of its own (port 8799), asking `large` (token-priced); each of N
   questions is asked with its long context as the system message, streamed, full and with
   `x-sluice-compress: ratio=R`, alternating which goes first; TTFT, prompt tokens (the
   engine's usage) and the cost header, same run.

Prints progress; writes results.json and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.compression_data import QA, load
from sluice.compression.compressor import compress
from sluice.compression.methods import Select, random_drop, relevance, salience, truncate

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
PORT, REDIS_PORT = 8799, 6408


def log(message: str) -> None:
    print(f"[compression] {message}", flush=True)


def _tokens() -> Callable[[str], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ROOT / "models/demo/small"))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def survival(items: list[QA], methods: dict[str, Select], length: Callable[[str], int],
             short: bool = False) -> list[dict[str, Any]]:
    rows = []
    for name, select in methods.items():
        for ratio in RATIOS:
            started = time.perf_counter()
            kept_tokens = total_tokens = 0
            hits: list[tuple[QA, bool]] = []
            for qa in items:
                context = qa.paragraph if short else qa.context
                text = compress([context], qa.question, ratio, select, length)[0]
                kept_tokens += length(text)
                total_tokens += length(context)
                hits.append((qa, qa.survives(text)))
            numeric = [ok for qa, ok in hits if any(c.isdigit() for c in qa.answers[0])]
            words = [ok for qa, ok in hits if not any(c.isdigit() for c in qa.answers[0])]
            halves = [[ok for qa, ok in hits if (hash_title(qa.title) % 2) == h] for h in (0, 1)]
            row = {"method": name, "ratio": ratio, "short": short, "questions": len(hits),
                   "survival": statistics.mean(ok for _, ok in hits),
                   "survival_numeric": statistics.mean(numeric) if numeric else None,
                   "numeric_questions": len(numeric),
                   "survival_other": statistics.mean(words) if words else None,
                   "survival_halves": [statistics.mean(h) if h else None for h in halves],
                   "kept_token_share": kept_tokens / total_tokens,
                   "ms_per_question": 1000 * (time.perf_counter() - started) / len(items)}
            rows.append(row)
            log(f"{'short ' if short else ''}{name:9} ratio {ratio}: answer survives "
                f"{row['survival']:.1%} (numbers {row['survival_numeric']:.1%}, other "
                f"{row['survival_other']:.1%}); kept {row['kept_token_share']:.1%} of tokens, "
                f"{row['ms_per_question']:.0f} ms/question")
    return rows


GSM8K = ROOT.parent / "shared/data/routing/gsm8k_pairs.jsonl"
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def math_survival(methods: dict[str, Select], length: Callable[[str], int],
                  limit: int = 0) -> list[dict[str, Any]]:
    """GSM8K word problems: the last sentence is the question, the rest the context; the score
    is the share of problems whose every number survives (a solution needs them all)."""
    from sluice.compression.units import sentences

    problems = []
    for line in GSM8K.read_text().splitlines()[:limit or None]:
        parts = sentences(" ".join(json.loads(line)["prompt"].split()))
        if len(parts) >= 3 and NUMBER.search(" ".join(parts[:-1])):
            problems.append((" ".join(parts[:-1]), parts[-1]))
    rows = []
    for name, select in methods.items():
        for ratio in RATIOS:
            kept = 0
            for context, question in problems:
                text = compress([context], question, ratio, select, length)[0]
                kept += all(n in text for n in NUMBER.findall(context))
            rows.append({"method": name, "ratio": ratio, "problems": len(problems),
                         "all_numbers_kept": kept / len(problems)})
            log(f"math {name:9} ratio {ratio}: every number kept in "
                f"{kept / len(problems):.1%} of {len(problems)} problems")
    return rows


def stage_cost(items: list[QA], embedder: Any, length: Callable[[str], int], n: int = 40
               ) -> dict[str, Any]:
    """What compressing one request costs: sentence split, counting, MiniLM (no memo: every
    sentence embedded, as on a request) and the selection, per method, at ratio 0.5."""
    out: dict[str, Any] = {}
    for name, select in (("relevance", relevance(embedder)), ("salience", salience(embedder))):
        times = []
        for qa in items[:n]:
            started = time.perf_counter()
            compress([qa.context], qa.question, 0.5, select, length)
            times.append(1000 * (time.perf_counter() - started))
        times.sort()
        out[name] = {"requests": len(times), "p50_ms": statistics.median(times),
                     "p90_ms": times[int(0.9 * (len(times) - 1))]}
        log(f"stage cost {name}: p50 {out[name]['p50_ms']:.0f} ms, p90 "
            f"{out[name]['p90_ms']:.0f} ms per request ({len(times)} requests)")
    return out


def hash_title(title: str) -> int:
    """A stable split of the articles in two (not Python's salted hash)."""
    return sum(title.encode())


async def _ask(client: Any, qa: QA, compress_header: str | None) -> dict[str, Any]:
    """One streamed chat: TTFT (first content), the engine's usage, Sluice's note."""
    headers = {"cache-control": "no-store"}
    if compress_header:
        headers["x-sluice-compress"] = compress_header
    body = {"model": "large", "max_tokens": 16, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": "Answer from this document.\n\n"
                                                      + qa.context},
                         {"role": "user", "content": qa.question}]}
    started = time.perf_counter()
    ttft: float | None = None
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=headers) as resp:
        note = resp.headers.get("x-sluice-compression", "")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and any((c.get("delta") or {}).get("content")
                                    for c in event.get("choices") or []):
                ttft = time.perf_counter() - started
            usage = event.get("usage") or usage
    return {"status": resp.status_code, "ttft_s": ttft, "note": note,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0)}


def live(items: list[QA], ratio: float, out: Path) -> list[dict[str, Any]]:
    import httpx
    import yaml

    from loadtests import own_stack

    tmp = Path(tempfile.mkdtemp(prefix="sluice-compression-"))
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    profile["routing"] = str(ROOT / "platform/routing/routes.yaml")
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {"enabled": False}
    profile["engine_kwargs"]["enable_prefix_caching"] = False  # every prefill computed
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
    proc = own_stack.serve(tmp / "profile.yaml", out / "serve.log", PORT, REDIS_PORT)
    rows: list[dict[str, Any]] = []
    header = f"ratio={ratio}"

    async def run() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=120) as c:
            await _ask(c, items[0], None)  # warm-up
            for i, qa in enumerate(items):
                order = (None, header) if i % 2 == 0 else (header, None)
                for which in order:
                    r = await _ask(c, qa, which)
                    rows.append({"id": qa.id, "compressed": which is not None, **r})
                if (i + 1) % 10 == 0:
                    log(f"live: {i + 1}/{len(items)} questions")

    try:
        asyncio.run(run())
    finally:
        own_stack.stop(proc)
    return rows


def live_summary(rows: list[dict[str, Any]], price: Callable[[dict[str, Any]], float]
                 ) -> dict[str, Any]:
    """Per arm: prompt tokens, TTFT and cost (the catalog's price of the engine's usage), over
    the questions both arms answered with content to time (a random-weight model's answer can
    be all whitespace: no first token to see)."""
    out: dict[str, Any] = {}
    timed = [r for r in rows if r["status"] == 200 and r["ttft_s"]]
    paired = ({r["id"] for r in timed if r["compressed"]}
              & {r["id"] for r in timed if not r["compressed"]})
    out["questions"] = len(paired)
    for compressed in (False, True):
        sel = [{**r, "cost_usd": price(r)} for r in timed
               if r["compressed"] is compressed and r["id"] in paired]
        ttft = sorted(r["ttft_s"] for r in sel)
        out["compressed" if compressed else "full"] = {
            "requests": len(sel),
            "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in sel),
            "ttft_p50_ms": 1000 * statistics.median(ttft),
            "ttft_p90_ms": 1000 * ttft[int(0.9 * (len(ttft) - 1))],
            "cost_usd_mean": statistics.mean(r["cost_usd"] for r in sel)}
    full, comp = out["full"], out["compressed"]
    out["prompt_tokens_ratio"] = comp["prompt_tokens_mean"] / full["prompt_tokens_mean"]
    out["ttft_p50_ratio"] = comp["ttft_p50_ms"] / full["ttft_p50_ms"]
    out["cost_ratio"] = comp["cost_usd_mean"] / full["cost_usd_mean"]
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    panels = (("survival", False, "contexts of 700+ words"),
              ("survival_numeric", False, "answers with a number"),
              ("survival", True, "short contexts (one paragraph)"))
    for ax, (key, short, title) in zip(axes, panels, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["method"] == method and r["short"] is short]
            ax.plot([r["ratio"] for r in sel], [100 * r[key] for r in sel], "o-", label=method)
        ax.set_title(title)
        ax.set_xlabel("ratio (share of context tokens kept)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("questions whose answer survives (%)")
    axes[0].legend()
    fig.suptitle("Prompt compression on SQuAD v1.1 dev (extractive answer survival)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="questions (0: all)")
    parser.add_argument("--live", type=int, default=0, help="questions asked live (0: none)")
    parser.add_argument("--live-ratio", type=float, default=0.5)
    parser.add_argument("--parts", default="survival,cost,math,live",
                        help="which parts to run (a rerun of one keeps the others' results)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/compression"))
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/compression.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from sluice.router.features import MemoEmbedder, MiniLMEmbedder

    items = load()
    if args.limit:
        items = items[:args.limit]
    length = _tokens()
    embedder = MemoEmbedder(MiniLMEmbedder())
    log(f"{len(items)} questions, {len({q.title for q in items})} articles; embedding")
    methods: dict[str, Select] = {"relevance": relevance(embedder),
                                  "salience": salience(embedder),
                                  "random": random_drop(0), "truncate": truncate}
    parts = set(args.parts.split(","))
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["questions"] = len(items)
    if "survival" in parts:
        results["survival"] = (survival(items, methods, length)
                               + survival(items, methods, length, short=True))
        plot(results["survival"], args.plot)
        path.write_text(json.dumps(results, indent=2))
    if "cost" in parts:
        results["stage_cost"] = stage_cost(items, MiniLMEmbedder(), length)
        path.write_text(json.dumps(results, indent=2))
    if "math" in parts:
        results["math"] = math_survival(methods, length, args.limit)
        path.write_text(json.dumps(results, indent=2))
    if args.live and "live" in parts:
        from sluice.accounting.response_cost import UsagePricer
        from sluice.schema.loading import load_platform_config

        rows = live(items[:args.live], args.live_ratio, args.out)
        catalog = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml",
                                       root=ROOT).catalog
        pricer = UsagePricer({m.name: m.pricing for m in catalog.models})

        def price(row: dict[str, Any]) -> float:
            return pricer.price({"prompt_tokens": row["prompt_tokens"],
                                 "completion_tokens": row["completion_tokens"]},
                                "large", hit=False).total_usd

        results["live"] = {"ratio": args.live_ratio, "rows": rows,
                           "summary": live_summary(rows, price)}
        log(f"live: {json.dumps(results['live']['summary'])}")
        path.write_text(json.dumps(results, indent=2))
    log(f"wrote {args.out}/results.json and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
