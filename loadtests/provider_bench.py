"""The provider path and its failover, measured (#21).

    python -m loadtests.provider_bench --out bench-results/providers

One `loadtests.provider_stack` (vLLM's own OpenAI server as the stand-in provider, behind a
pass-through TCP proxy; `sluice serve` with `small` on its engine and `hosted`, the
provider model, failing over to `small`):

1. **Added latency**: `--requests` pairs of streamed requests, one at a time, alternating
   which goes first, each with a fresh prompt: to the provider directly (OpenAI's SDK, its
   URL through the same proxy) and to `hosted` through Sluice (same SDK). TTFT (first text)
   and total time, p50/p90, and the ratio Sluice / direct of the p50s. The same for the
   Anthropic API: the server's `/v1/messages` called directly (Anthropic's SDK, through the
   HTTP fault proxy in pass-through) against `claude` through Sluice (OpenAI's SDK; Sluice
   translates to Messages and back, through the same proxy).
2. **Failover**: the provider's connections reset and new ones refused (it died). Then
   `--requests` requests to `hosted` (answered by `small`) against as many to `small`
   directly, alternating: what a failed-over answer costs over a plain `small` answer, for
   the first requests (each tries the provider first) and once the provider is put aside.
   Then the provider back, stalled instead (the proxy holds its bytes past its first-byte
   bound): the time to `small`'s streamed answer (a stream's first event is bounded by
   `first_token_timeout_s`; an answer not streamed waits up to `request_timeout_s`).

Prints progress; writes results.json and a plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anthropic
import httpx
from openai import OpenAI

from loadtests.provider_stack import PROVIDER_KEY, ProviderStack, Settings

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 16


def _prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] Describe a river."}]


def _streamed(client: OpenAI, model: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(model=model, max_tokens=MAX_TOKENS,
                                                temperature=0, stream=True,
                                                messages=_prompt()):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
    end = time.perf_counter()
    return (first or end) - started, end - started


def _messages(client: anthropic.Anthropic, model: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    with client.messages.stream(model=model, max_tokens=MAX_TOKENS, messages=_prompt(),
                                extra_body={"temperature": 0}) as stream:
        for text in stream.text_stream:
            if text:
                first = first or time.perf_counter()
    end = time.perf_counter()
    return (first or end) - started, end - started


def _answered(url: str, model: str, stream: bool = False) -> tuple[float, str, str]:
    """Seconds to the whole answer, the model that answered, the models that did not."""
    started = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "messages": _prompt(),
        "stream": stream})
    r.raise_for_status()
    return (time.perf_counter() - started, r.headers["x-sluice-model"],
            r.headers.get("x-sluice-failover", ""))


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "n": len(ordered)}


def overhead(stack: ProviderStack, n: int) -> dict[str, Any]:
    s = stack.settings
    direct = OpenAI(base_url=f"http://127.0.0.1:{s.proxy_port}/v1", api_key=PROVIDER_KEY,
                    max_retries=0, timeout=120)
    sluice = OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = anthropic.Anthropic(base_url=f"http://127.0.0.1:{s.http_faults_port}",
                                   auth_token=PROVIDER_KEY, max_retries=0, timeout=120)
    paths = {"direct": lambda: _streamed(direct, "their-small"),
             "sluice": lambda: _streamed(sluice, "hosted"),
             "direct_messages": lambda: _messages(messages, "their-small"),
             "sluice_claude": lambda: _streamed(sluice, "claude")}
    samples: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "total": []} for k in paths}
    for call in paths.values():  # warm every path
        call()
    names = list(paths)
    for i in range(n):
        for path in names[i % 2::] + names[:i % 2]:  # each goes first in turn
            ttft, total = paths[path]()
            samples[path]["ttft"].append(ttft)
            samples[path]["total"].append(total)
        if (i + 1) % 10 == 0:
            print(f"[providers] overhead {i + 1}/{n} rounds", flush=True)
    out: dict[str, Any] = {p: {k: _ms(v) for k, v in m.items()} for p, m in samples.items()}
    out["ratio_sluice_over_direct_p50"] = {
        k: out["sluice"][k]["p50_ms"] / out["direct"][k]["p50_ms"] for k in ("ttft", "total")}
    out["ratio_claude_over_direct_messages_p50"] = {
        k: out["sluice_claude"][k]["p50_ms"] / out["direct_messages"][k]["p50_ms"]
        for k in ("ttft", "total")}
    return out


def failover(stack: ProviderStack, n: int) -> dict[str, Any]:
    proxy = stack.proxy
    assert proxy is not None
    assert _answered(stack.url, "hosted")[1] == "hosted"
    proxy.refuse(True)
    proxy.reset()
    first, aside, plain = [], [], []
    try:
        for i in range(n):
            took, model, passed = _answered(stack.url, "hosted")
            assert model == "small" and passed == "hosted", (model, passed)
            (first if i < stack.settings.threshold else aside).append(took)
            plain.append(_answered(stack.url, "small")[0])
        print(f"[providers] failover: {n} answers with the provider down", flush=True)
    finally:
        proxy.pass_through()
    time.sleep(stack.settings.cooldown_s + 1)
    assert _answered(stack.url, "hosted")[1] == "hosted"  # back
    proxy.set_latency(stack.settings.first_byte_s + 2)  # a stream's first-event bound
    try:
        stalled = [_answered(stack.url, "hosted", stream=True)
                   for _ in range(stack.settings.threshold)]
    finally:
        proxy.pass_through()
    assert all(m == "small" for _, m, _ in stalled)
    return {"provider_died": {"tried_first": _ms(first), "put_aside": _ms(aside),
                              "small_directly": _ms(plain)},
            "provider_stalled": _ms([t for t, _, _ in stalled]),
            "first_byte_bound_s": stack.settings.first_byte_s}


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    over = results["overhead"]
    kinds = ["ttft", "total"]
    series = (("direct", "OpenAI API directly"), ("sluice", "through Sluice (hosted)"),
              ("direct_messages", "Messages API directly"),
              ("sluice_claude", "through Sluice (claude)"))
    for j, (name, label) in enumerate(series):
        left.bar([i + (j - 1.5) * 0.2 for i in range(2)],
                 [over[name][k]["p50_ms"] for k in kinds], 0.2, label=label)
    left.set_xticks(range(2), ["stream TTFT", "stream total"])
    left.set_ylabel("p50 latency (ms)")
    left.set_title("The provider path's added latency")
    left.legend()
    died = results["failover"]["provider_died"]
    bars = {"small directly": died["small_directly"]["p50_ms"],
            "failed over\n(provider tried)": died["tried_first"]["p50_ms"],
            "failed over\n(provider aside)": died["put_aside"]["p50_ms"],
            "provider stalled": results["failover"]["provider_stalled"]["p50_ms"]}
    right.bar(list(bars), list(bars.values()), color=["grey", "C1", "C2", "C3"])
    right.set_yscale("log")
    right.set_ylabel("p50 time to the whole answer (ms, log)")
    right.set_title("Answers while the provider is down")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/providers")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print("[providers] starting the stand-in provider and sluice serve ...", flush=True)
    with ProviderStack(Settings(port=8876, redis_port=6434, vllm_port=8878,
                                proxy_port=8879, http_faults_port=8880)) as stack:
        results = {"overhead": overhead(stack, args.requests),
                   "failover": failover(stack, max(args.requests // 4, 4))}
    results["command"] = "python -m loadtests.provider_bench " + " ".join(argv or sys.argv[1:])
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, args.out / "providers.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
