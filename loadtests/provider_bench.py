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
3. **Killed** (`--parts killed`, last: the provider does not come back): open-loop load on
   `hosted` (`--rate` req/s, Poisson arrivals, half streamed), and `--kill-at` s in (once
   at least two requests are in flight, within 5 s), the stand-in provider's process group
   SIGKILLed. Reported: the time from the kill to the
   first answer from `small`, every request's outcome (answered by whom, failed), the ones
   in flight at the kill, and the latency of answers before and after it.

Prints progress; writes results.json (killed.json for the killed part alone) and a plot.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
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


def _outcome(url: str, stream: bool) -> dict[str, Any]:
    """One request to `hosted`: when it started and ended, its status, who answered, and
    for a stream whether it ended with [DONE] or with an error event."""
    started = time.monotonic()
    row: dict[str, Any] = {"start": started, "stream": stream}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120, json={
                "model": "hosted", "max_tokens": 32, "temperature": 0, "stream": stream,
                "messages": _prompt()}) as r:
            body = r.read().decode()
            row.update(status=r.status_code, model=r.headers.get("x-sluice-model", ""),
                       failover=r.headers.get("x-sluice-failover", ""))
            if stream and r.status_code == 200:
                row["error_event"] = '"error"' in body
                row["done"] = "data: [DONE]" in body
    except httpx.HTTPError as exc:
        row.update(status=0, model="", failover="", exception=type(exc).__name__)
    row["end"] = time.monotonic()
    return row


def killed(stack: ProviderStack, rate: float, seconds: float, kill_at: float) -> dict[str, Any]:
    """Open-loop load on `hosted`; its provider SIGKILLed `kill_at` s in."""
    assert _answered(stack.url, "hosted")[1] == "hosted"
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    in_flight = [0]

    def one(stream: bool) -> None:
        with lock:
            in_flight[0] += 1
        row = _outcome(stack.url, stream)
        with lock:
            rows.append(row)
            in_flight[0] -= 1

    rng = random.Random(7)
    began = time.monotonic()
    kill_time = None
    next_at = began
    i = 0
    while time.monotonic() - began < seconds:
        now = time.monotonic()
        # the kill lands while at least two requests are in flight (or 5 s after kill_at),
        # so it cuts answers the provider is generating, as a crash under load does
        if kill_time is None and now - began >= kill_at and (
                in_flight[0] >= 2 or now - began >= kill_at + 5):
            kill_time = stack.kill_provider()
            print(f"[providers] killed the provider at {kill_time - began:.1f} s", flush=True)
        if now >= next_at:
            t = threading.Thread(target=one, args=(i % 2 == 1,), daemon=True)
            t.start()
            threads.append(t)
            i += 1
            next_at += rng.expovariate(rate)
        time.sleep(0.002)
    for t in threads:
        t.join(timeout=180)
    assert kill_time is not None
    after = sorted((r for r in rows if r["status"] == 200 and r["model"] == "small"),
                   key=lambda r: r["end"])
    in_flight = [r for r in rows if r["start"] < kill_time < r["end"]]
    before = [r["end"] - r["start"] for r in rows if r["end"] < kill_time and r["status"] == 200]
    later = [r["end"] - r["start"] for r in rows if r["start"] > kill_time + 5
             and r["status"] == 200]

    def outcome(r: dict[str, Any]) -> str:
        if r["status"] != 200:
            return f"status {r['status']}"
        if r.get("error_event"):
            return f"{r['model']} (stream ended with an error event)"
        return r["model"]

    def counts(group: list[dict[str, Any]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in group:
            out[outcome(r)] = out.get(outcome(r), 0) + 1
        return out

    return {"rate_per_s": rate, "seconds": seconds, "kill_at_s": kill_at, "sent": len(rows),
            "outcomes": counts(rows), "in_flight_at_kill": counts(in_flight),
            "kill_to_first_small_answer_ms": (1000 * (after[0]["end"] - kill_time)
                                              if after else None),
            "answered_before_kill": _ms(before) if before else None,
            "answered_from_5s_after": _ms(later) if later else None,
            "first_byte_bound_s": stack.settings.first_byte_s,
            "requests": [{**r, "start": r["start"] - kill_time, "end": r["end"] - kill_time}
                         for r in sorted(rows, key=lambda r: r["start"])]}


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
    parser.add_argument("--parts", default="overhead,failover",
                        help="comma-separated: overhead, failover, killed (killed runs last)")
    parser.add_argument("--rate", type=float, default=4.0, help="(killed) requests/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="(killed) load time")
    parser.add_argument("--kill-at", type=float, default=10.0, help="(killed) s into the load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/providers")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    print("[providers] starting the stand-in provider and sluice serve ...", flush=True)
    results: dict[str, Any] = {}
    with ProviderStack(Settings(port=8876, redis_port=6434, vllm_port=8878,
                                proxy_port=8879, http_faults_port=8880)) as stack:
        if "overhead" in parts:
            results["overhead"] = overhead(stack, args.requests)
        if "failover" in parts:
            results["failover"] = failover(stack, max(args.requests // 4, 4))
        if "killed" in parts:
            results["killed"] = killed(stack, args.rate, args.seconds, args.kill_at)
    results["command"] = "python -m loadtests.provider_bench " + " ".join(argv or sys.argv[1:])
    name = "killed.json" if parts == ["killed"] else "results.json"
    (args.out / name).write_text(json.dumps(results, indent=2))
    if "overhead" in results and "failover" in results:
        _plot(results, args.out / "providers.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
