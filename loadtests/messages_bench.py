"""Anthropic's Messages API against the OpenAI endpoint on the same model, same run (#21).

    python -m loadtests.messages_bench --out bench-results/messages

A `sluice serve` of its own (response and semantic caches off, so every request reaches the
engine). `--requests` pairs of requests to `small` through Anthropic's official SDK
(`/v1/messages`) and OpenAI's (`/v1/chat/completions`), in alternating order, one at a
time, each with a fresh prompt of the same length (no prefix-cache hit for either):
streamed, the time to the first text (TTFT) and to the end; then not streamed, the time to
the whole answer. p50 and p90 each, and the ratio messages / chat of the p50s. Plus, in process, what the two translations cost per
request (a Messages body into a chat request, a chat answer into a message).

Prints progress; writes results.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anthropic
import openai
import yaml

from loadtests import own_stack

ROOT = Path(__file__).resolve().parents[1]
PORT, REDIS_PORT = 8798, 6408
MAX_TOKENS = 16
GREEDY = {"temperature": 0}  # Anthropic's SDK no longer takes temperature itself


def _profile(tmp: Path) -> Path:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    profile["routing"] = str(ROOT / "platform/routing/routes.yaml")
    profile["response_cache"] = {**profile.get("response_cache", {}), "enabled": False}
    profile["semantic_cache"] = {"enabled": False}
    profile["dashboard"] = {"enabled": False}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _prompt(i: int) -> str:
    return f"[{uuid.uuid4().hex[:8]} {i}] Describe a river in a few words."


def _stream_messages(client: anthropic.Anthropic, prompt: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    with client.messages.stream(model="small", max_tokens=MAX_TOKENS, extra_body=GREEDY,
                                messages=[{"role": "user", "content": prompt}]) as stream:
        for _ in stream.text_stream:
            first = first or time.perf_counter()
    end = time.perf_counter()
    return (first or end) - started, end - started


def _stream_chat(client: openai.OpenAI, prompt: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(
            model="small", max_tokens=MAX_TOKENS, temperature=0, stream=True,
            messages=[{"role": "user", "content": prompt}]):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
    end = time.perf_counter()
    return (first or end) - started, end - started


def _whole_messages(client: anthropic.Anthropic, prompt: str) -> float:
    started = time.perf_counter()
    client.messages.create(model="small", max_tokens=MAX_TOKENS, extra_body=GREEDY,
                           messages=[{"role": "user", "content": prompt}])
    return time.perf_counter() - started


def _whole_chat(client: openai.OpenAI, prompt: str) -> float:
    started = time.perf_counter()
    client.chat.completions.create(model="small", max_tokens=MAX_TOKENS, temperature=0,
                                   messages=[{"role": "user", "content": prompt}])
    return time.perf_counter() - started


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "n": len(ordered)}


def _translation_us(repeats: int) -> dict[str, float]:
    from sluice.deployments import anthropic_api

    body = json.dumps({"model": "small", "max_tokens": MAX_TOKENS, "system": "Be brief.",
                       "messages": [{"role": "user", "content": _prompt(0)}]}).encode()
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "small",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "A long river."}}],
              "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}}
    out = {}
    for name, call in (("request_us", lambda: anthropic_api.chat_payload(body)),
                       ("answer_us", lambda: anthropic_api.message(answer))):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        out[name] = 1e6 * statistics.median(times)
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["stream TTFT", "stream total", "whole"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, api in ((-width / 2, "chat"), (width / 2, "messages")):
        values = [results[api][k]["p50_ms"] for k in kinds]
        ax.bar([i + offset for i in range(len(kinds))], values, width,
               label="/v1/chat/completions (openai SDK)" if api == "chat"
               else "/v1/messages (anthropic SDK)")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("p50 latency (ms)")
    top = max(results[api][k]["p50_ms"] for api in ("chat", "messages") for k in kinds)
    ax.set_ylim(0, top * 1.4)  # room for the legend above the bars
    ax.set_title(f"small, max_tokens {MAX_TOKENS}, {results['chat']['whole']['n']} requests each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/messages")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="messages-bench-"))
    print(f"[messages] starting sluice serve on :{PORT} ...", flush=True)
    proc = own_stack.serve(_profile(tmp), tmp / "serve.log", PORT, REDIS_PORT)
    base = f"http://127.0.0.1:{PORT}"
    claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=120)
    gpt = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    samples: dict[str, dict[str, list[float]]] = {
        api: {"stream TTFT": [], "stream total": [], "whole": []} for api in ("chat", "messages")}
    try:
        _whole_chat(gpt, _prompt(-1))  # warm both paths once
        _whole_messages(claude, _prompt(-2))
        for i in range(args.requests):
            order = ("messages", "chat") if i % 2 else ("chat", "messages")
            for api in order:  # a prompt of its own each: no prefix-cache hit on the second
                first, total = (_stream_messages(claude, _prompt(i)) if api == "messages"
                                else _stream_chat(gpt, _prompt(i)))
                samples[api]["stream TTFT"].append(first)
                samples[api]["stream total"].append(total)
            for api in reversed(order):
                samples[api]["whole"].append(_whole_messages(claude, _prompt(1000 + i))
                                             if api == "messages"
                                             else _whole_chat(gpt, _prompt(2000 + i)))
            if (i + 1) % 10 == 0:
                print(f"[messages] {i + 1}/{args.requests} pairs", flush=True)
    finally:
        own_stack.stop(proc)
    results: dict[str, Any] = {api: {k: _summary(v) for k, v in kinds.items()}
                               for api, kinds in samples.items()}
    results["ratio_messages_over_chat_p50"] = {
        k: results["messages"][k]["p50_ms"] / results["chat"][k]["p50_ms"]
        for k in ("stream TTFT", "stream total", "whole")}
    results["translation"] = _translation_us(2000)
    results["command"] = "python -m loadtests.messages_bench " + " ".join(argv or sys.argv[1:])
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, args.out / "messages.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
