"""Context overflow (#22), measured: what exact token counting adds to a request, and what
each policy makes of conversations that outgrow the small model.

    python -m loadtests.context_bench --out bench-results/context

1. **Counting** (in process, no engine): the ingress's counter (`TokenCounter`: the chat
   rendered with the demo model's template and tokenized) against the character estimate it
   replaces (body bytes / 4), on chats of about 1k, 8k and 32k tokens, p50 and p99 over
   `--repeats` calls each, same run; plus a `trim` decision (a binary search of renders) on
   the 32k chat against `small`'s 2,048-token context.
2. **Policies** (a `sluice serve` of its own, response cache off): `--sessions` chat
   sessions, each growing one turn per request (a user question of about 100 tokens, then
   the engine's answer appended) for `--turns` turns, so each outgrows `small`'s 2,048
   tokens around turn 10. Every session is replayed under `reject`, `route` and `trim`
   (`x-sluice-context`), and `trim` once more with no headroom (a stack of its own); per
   policy, the share of requests answered, their cost (`usage.cost.total_usd`, the
   platform's own prices) against `reject`, and the share of prompt tokens the engine's
   prefix cache served (`cached_tokens`). Each variant's sessions have words of their own,
   so none reuses another's cached prefixes.

Prints progress; writes results.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import random
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
PORT, REDIS_PORT = 8797, 6407
# (label, x-sluice-context, small's trim_headroom): one stack per headroom
VARIANTS = (("reject", "reject", 0.2), ("route", "route", 0.2), ("trim", "trim", 0.2),
            ("trim, no headroom", "trim", 0.0))
WORDS = ["river", "stone", "lamp", "orbit", "quiet", "number", "garden", "signal", "paper",
         "winter", "copper", "thread", "market", "silver", "window"]


def _chat(rng: random.Random, approx_tokens: int) -> list[dict[str, str]]:
    """A chat of about `approx_tokens` demo-tokenizer tokens (measured, then reported)."""
    messages = [{"role": "system", "content": "You answer briefly."}]
    i = 0
    while len(json.dumps(messages)) < approx_tokens * 2.9:
        text = " ".join(rng.choice(WORDS) for _ in range(80))
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        i += 1
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": "And so?"})
    return messages


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def counting(repeats: int) -> dict[str, Any]:
    from sluice.pipeline.request import RequestLimits, parsed
    from sluice.pipeline.token_counter import TokenCounter
    from sluice.router.context_fit import Candidate, ContextFit
    from sluice.schema.context import ContextPolicy

    source = str(ROOT / "models/demo/small")
    counter = TokenCounter({"small": source})
    counter.tokens_of("small")  # loaded once per model, before any request
    rng = random.Random(0)
    out: dict[str, Any] = {}
    for size in (1000, 8000, 32000):
        body = {"model": "small", "messages": _chat(rng, size), "max_tokens": 16}
        raw = json.dumps(body)
        request = parsed("chat", json.loads(raw), RequestLimits(8, 4096), "r", {}, len(raw))
        exact, estimate, floors = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            tokens = counter.count_now("small", request.llm)
            exact.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # the gate's pre-check: rendered, then its floor
            prompt = counter.prompt_now("small", request.llm)
            assert prompt is not None
            floor = counter.floor_prompt("small", prompt)
            floors.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            request.prompt_tokens = None
            guess = request.prompt_tokens_guess()
            estimate.append(time.perf_counter() - t0)
        row = {"tokens": tokens, "estimate_tokens": guess, "messages": len(body["messages"]),
               "exact_p50_ms": _pct(exact, 0.5) * 1e3, "exact_p99_ms": _pct(exact, 0.99) * 1e3,
               "estimate_p50_ms": _pct(estimate, 0.5) * 1e3,
               "estimate_p99_ms": _pct(estimate, 0.99) * 1e3,
               "floor_tokens": floor, "floor_p50_ms": _pct(floors, 0.5) * 1e3,
               "floor_p99_ms": _pct(floors, 0.99) * 1e3}
        print(f"[count] {tokens} tokens ({len(body['messages'])} messages): exact p50 "
              f"{row['exact_p50_ms']:.2f} ms p99 {row['exact_p99_ms']:.2f} ms; estimate p50 "
              f"{row['estimate_p50_ms'] * 1e3:.1f} us p99 {row['estimate_p99_ms'] * 1e3:.1f} us "
              f"(guessed {guess}); floor {floor} in p50 {row['floor_p50_ms']:.2f} ms",
              flush=True)
        out[f"{size // 1000}k"] = row
        if size == 32000:
            from sluice.pipeline.token_counter import plain_messages

            messages = plain_messages(request.llm.messages)
            llm = request.llm

            def count(model: str, kept: Any, llm: Any = llm) -> int:
                return counter.count_now(model, llm, kept) or 0

            fit = ContextFit(count)
            times = []
            for _ in range(max(3, repeats // 10)):
                t0 = time.perf_counter()
                decided = fit.decide("trim", ContextPolicy(), Candidate("small", 2048), [],
                                     16, messages)
                times.append(time.perf_counter() - t0)
            out["trim_32k"] = {"p50_ms": _pct(times, 0.5) * 1e3,
                               "max_ms": max(times) * 1e3,
                               "outcome": getattr(decided, "outcome", "overflow")}
            print(f"[count] trim decision on the 32k chat: p50 {out['trim_32k']['p50_ms']:.1f}"
                  f" ms", flush=True)
    return out


def _profile(tmp: Path, headroom: float) -> Path:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["context"] = {"models": {"small": {"trim_headroom": headroom}}}
    profile.pop("routing", None)
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    profile["dashboard"] = {"enabled": False}
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {"enabled": False}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _serve(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = own_stack.serve(profile, log, PORT, REDIS_PORT)
    print(f"[serve] ready on :{PORT}", flush=True)
    return proc


_stop = own_stack.stop


def _session(client: httpx.Client, policy: str, seed: int, turns: int,
             max_tokens: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    rows = []
    for turn in range(turns):
        question = " ".join(rng.choice(WORDS) for _ in range(60))
        messages.append({"role": "user", "content": f"Turn {turn}: {question}?"})
        body = {"model": "small", "messages": messages, "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True}
        r = client.post("/v1/chat/completions", json=body,
                        headers={"x-sluice-context": policy})
        row: dict[str, Any] = {"turn": turn, "status": r.status_code,
                               "model": r.headers.get("x-sluice-model"),
                               "context": r.headers.get("x-sluice-context")}
        if r.status_code == 200:
            answer = r.json()
            row["cost_usd"] = answer["usage"]["cost"]["total_usd"]
            row["prompt_tokens"] = answer["usage"]["prompt_tokens"]
            row["cached_tokens"] = ((answer["usage"].get("prompt_tokens_details") or {})
                                    .get("cached_tokens") or 0)
            reply = answer["choices"][0]["message"]["content"] or ""
        else:
            row["cost_usd"] = 0.0
            row["code"] = (r.json().get("error") or {}).get("code")
            # the application keeps its history (the 400 changed nothing) and a fixed reply
            reply = "(no answer)"
        messages.append({"role": "assistant", "content": reply})
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200]
    prompt = sum(r["prompt_tokens"] for r in ok)
    return {
        "requests": len(rows), "answered": len(ok), "answered_share": len(ok) / len(rows),
        "by_model": {m: sum(r["model"] == m for r in ok) for m in sorted({r["model"] for r in ok})},
        "overflow_outcomes": sum(bool(r["context"]) for r in ok),
        "cost_usd": sum(r["cost_usd"] for r in ok),
        "cost_per_answer_usd": sum(r["cost_usd"] for r in ok) / len(ok) if ok else None,
        "prompt_tokens": prompt,
        "cached_share": sum(r["cached_tokens"] for r in ok) / prompt if prompt else None,
        "wall_s": wall_s,
        "first_overflow_turn": min((r["turn"] for r in rows
                                    if r["status"] != 200 or r["context"]), default=None)}


def policies(sessions: int, turns: int, max_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for headroom in sorted({h for _, _, h in VARIANTS}, reverse=True):
        tmp = Path(tempfile.mkdtemp(prefix="sluice-context-bench-"))
        proc = _serve(_profile(tmp, headroom), tmp / "serve.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=300) as client:
                for index, (label, policy, h) in enumerate(VARIANTS):
                    if h != headroom:
                        continue
                    rows: list[dict[str, Any]] = []
                    t0 = time.monotonic()
                    for s in range(sessions):
                        # other words per variant: no variant reuses another's prefixes
                        rows += _session(client, policy, 1000 * index + s, turns, max_tokens)
                        print(f"[{label}] session {s + 1}/{sessions}: "
                              f"{sum(r['status'] == 200 for r in rows)}/{len(rows)} answered",
                              flush=True)
                    out[label] = {"policy": policy, "trim_headroom": headroom,
                                  **_summary(rows, time.monotonic() - t0)}
                    print(f"[{label}] {json.dumps(out[label])}", flush=True)
        finally:
            _stop(proc)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [k for k in ("1k", "8k", "32k") if k in results["counting"]]
    exact = [results["counting"][k]["exact_p50_ms"] for k in sizes]
    p99 = [results["counting"][k]["exact_p99_ms"] for k in sizes]
    a.bar([f"{results['counting'][k]['tokens']:,}" for k in sizes], exact, label="p50")
    a.scatter([f"{results['counting'][k]['tokens']:,}" for k in sizes], p99, color="k",
              label="p99", zorder=3)
    a.set_xlabel("prompt tokens")
    a.set_ylabel("exact count, ms (estimate: < 0.01 ms)")
    a.set_title("What counting adds per request")
    a.legend()
    pol = results.get("policies") or {}
    if pol:
        names = list(pol)
        share = [pol[n]["answered_share"] * 100 for n in names]
        cost = [pol[n]["cost_usd"] * 1e3 for n in names]
        b.bar(names, share, color="tab:green")
        b.set_ylabel("requests answered, %")
        b2 = b.twinx()
        b2.plot(names, cost, "o-", color="tab:red")
        b2.set_ylabel("cost of the answers, m$", color="tab:red")
        b.set_title("Sessions that outgrow small (2,048 tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--out", default="bench-results/context")
    parser.add_argument("--plot", default="docs/benchmarks/context.png")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join(["python -m loadtests.context_bench",
                                                    *sys.argv[1:]])}
    results["counting"] = counting(args.repeats)
    if not args.skip_live:
        results["policies"] = policies(args.sessions, args.turns, args.max_tokens)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, Path(args.plot))
    print(f"[done] wrote {out / 'results.json'} and {args.plot}", flush=True)
    if "policies" in results:
        base = results["policies"]["reject"]
        for name, row in results["policies"].items():
            ratio = row["cost_usd"] / base["cost_usd"] if base["cost_usd"] else float("nan")
            print(f"  {name}: answered {row['answered']}/{row['requests']}, cost "
                  f"${row['cost_usd']:.6f} ({ratio:.2f}x reject's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
