"""Serving-layer overhead: Sluice's full path vs vLLM's own OpenAI server, same model, same run.

Both servers run at once with the same engine arguments; requests alternate between them
(the order flips every round) so the machine's drift and noise hit both alike. Reports TTFT
p50/p95 at concurrency 1 and output tokens/s at concurrency 16, each as the ratio
Sluice / bare.

    python -m loadtests.overhead_bench --out bench-results/overhead
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from loadtests.sse_client import StreamTiming, timed_completion

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ("The river carried the boat past the old mill, and the travellers talked about "
          "the weather, the harvest and the long road ahead of them. ") * 2


def log(msg: str) -> None:
    print(f"[overhead] {msg}", file=sys.stderr, flush=True)


def start_bare_vllm(model_dir: Path, port: int, engine_args: list[str], env: dict[str, str],
                    log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "small", "--host", "127.0.0.1", "--port", str(port),
           *engine_args]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log_path.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def start_sluice(port: int, redis_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sluice.cli", "serve", "--port", str(port),
           "--redis-port", str(redis_port), "--no-dashboard"]
    return subprocess.Popen(cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"{name} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def ttft_alternating(targets: dict[str, str], n: int, max_tokens: int
                           ) -> dict[str, list[StreamTiming]]:
    """n requests to each server, one at a time, alternating (order flips every round)."""
    results: dict[str, list[StreamTiming]] = {name: [] for name in targets}
    async with httpx.AsyncClient(timeout=120) as client:
        for i in range(n):
            for name in (list(targets) if i % 2 == 0 else list(reversed(targets))):
                results[name].append(
                    await timed_completion(client, targets[name], "small", PROMPT, max_tokens))
            if (i + 1) % 10 == 0:
                log(f"concurrency 1: {i + 1}/{n} rounds")
    return results


async def throughput(url: str, concurrency: int, duration_s: float, max_tokens: int
                     ) -> tuple[float, int]:
    """Output tokens/s of `concurrency` closed-loop streams over duration_s."""
    deadline = time.perf_counter() + duration_s
    tokens = 0
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while time.perf_counter() < deadline:
            t = await timed_completion(client, url, "small", PROMPT, max_tokens)
            tokens += t.output_tokens
            errors += 0 if t.ok else 1

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return tokens / (time.perf_counter() - start), errors


def bare_engine_args(config) -> list[str]:
    """The profile's engine arguments, and the executor Sluice's CPU engines use: vLLM's
    in-process one (SingleWorkerCpuEngine). vLLM's server would otherwise start its
    multiprocessing executor, whose worker busy-polls and, beside another server on 2
    cores, starved bare vLLM's own API process (whole streams delivered in one burst)."""
    small = config.catalog.by_tier("small")
    kw = {**config.profile.engine_kwargs, "max_model_len": small.context_length}
    if config.profile.device == "cpu":
        kw["distributed_executor_backend"] = "uni"
    args: list[str] = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def run(out: Path, n_ttft: int, rounds: int, duration_s: float, concurrency: int) -> dict:
    """Both servers up at once; requests alternate so drift and noise hit both alike."""
    out.mkdir(parents=True, exist_ok=True)
    from sluice.schema.loading import load_platform_config

    config = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    model_dir = Path(config.model_source(config.catalog.by_tier("small")))
    bare = start_bare_vllm(model_dir, 8301, bare_engine_args(config),
                           dict(config.profile.engine_env), out / "bare-vllm.log")
    sluice = start_sluice(8302, 6392, out / "sluice.log")
    targets = {"bare": "http://127.0.0.1:8301/v1/completions",
               "sluice": "http://127.0.0.1:8302/v1/completions"}
    try:
        log("starting bare vLLM (port 8301) and Sluice (port 8302) ...")
        wait_http("http://127.0.0.1:8301/health", bare, 600, "bare vLLM")
        wait_http("http://127.0.0.1:8302/readyz", sluice, 600, "Sluice")
        log("warm-up")
        asyncio.run(ttft_alternating(targets, 5, 8))
        timings = asyncio.run(ttft_alternating(targets, n_ttft, 16))
        tput: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                tps, errors = asyncio.run(throughput(targets[name], concurrency, duration_s, 64))
                tput[name].append(tps)
                log(f"concurrency {concurrency}, round {r + 1}/{rounds}, {name}: "
                    f"{tps:.0f} output tokens/s ({errors} errors)")
    finally:
        stop(sluice)
        stop(bare)
    return summarize(timings, tput, n_ttft, concurrency, duration_s, rounds, out)


def summarize(timings: dict[str, list[StreamTiming]], tput: dict[str, list[float]], n: int,
              concurrency: int, duration_s: float, rounds: int, out: Path) -> dict:
    result: dict = {"ttft_ms": {}, "tokens_per_s": {}, "params": {
        "ttft_requests_each": n, "concurrency": concurrency, "round_s": duration_s,
        "rounds_each": rounds, "cpu_count": os.cpu_count()}}
    for name, ts in timings.items():
        ok = [t.ttft_s * 1000 for t in ts if t.ok]
        result["ttft_ms"][name] = {"p50": pct(ok, 0.5), "p95": pct(ok, 0.95), "n_ok": len(ok),
                                   "samples": ok}
    for name, values in tput.items():
        result["tokens_per_s"][name] = {"median": statistics.median(values), "rounds": values}
    t, tp = result["ttft_ms"], result["tokens_per_s"]
    result["ratios"] = {
        "ttft_p50": t["sluice"]["p50"] / t["bare"]["p50"],
        "ttft_p95": t["sluice"]["p95"] / t["bare"]["p95"],
        "throughput": tp["sluice"]["median"] / tp["bare"]["median"],
    }
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "overhead.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["bare", "sluice"]
    ax1.boxplot([result["ttft_ms"][n]["samples"] for n in names], tick_labels=names)
    ax1.set_ylabel("TTFT (ms)")
    ax1.set_title("TTFT at concurrency 1")
    meds = [result["tokens_per_s"][n]["median"] for n in names]
    ax2.bar(names, meds, color=["#888", "#2a7"])
    ax2.set_ylabel("output tokens/s")
    ax2.set_title(f"throughput at concurrency {result['params']['concurrency']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results/overhead")
    parser.add_argument("--requests", type=int, default=40, help="TTFT samples per server")
    parser.add_argument("--rounds", type=int, default=4, help="throughput rounds per server")
    parser.add_argument("--duration", type=float, default=15, help="seconds per round")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    result = run(Path(args.out), args.requests, args.rounds, args.duration, args.concurrency)
    t, tp, r = result["ttft_ms"], result["tokens_per_s"], result["ratios"]
    print(f"TTFT p50  bare {t['bare']['p50']:.1f} ms  sluice {t['sluice']['p50']:.1f} ms  "
          f"ratio {r['ttft_p50']:.2f}x")
    print(f"TTFT p95  bare {t['bare']['p95']:.1f} ms  sluice {t['sluice']['p95']:.1f} ms  "
          f"ratio {r['ttft_p95']:.2f}x")
    print(f"tokens/s  bare {tp['bare']['median']:.0f}  sluice {tp['sluice']['median']:.0f}  "
          f"ratio {r['throughput']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
