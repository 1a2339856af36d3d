"""What a selection route's choice costs per request (#21), in-process, same run:

    python -m loadtests.selection_bench --out bench-results/selection

`Selector.choose` for a request to a selection route with 2 and 8 candidates (each with a
full latency window, 2,000 samples, and bars from the headers) against the same call for a
request to a catalog model (what every other request pays: a dict lookup). Prints p50/p99
in microseconds and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from sluice.accounting.tenancy import Principal
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.selector import Selector
from sluice.router.selection import ObservedLatency
from sluice.schema.routing import SelectionConfig

ROOT = Path(__file__).resolve().parents[1]
HEADERS = {"x-sluice-task": "t", "x-sluice-min-quality": "0.6", "x-sluice-max-ttft-ms": "500"}


def _selector(k: int) -> Selector:
    names = [f"m{i}" for i in range(k)]
    selector = Selector([SelectionConfig(name="s", candidates=tuple(names), task="t")],
                        {"s": {"t": {n: 0.5 + i / (2 * k) for i, n in enumerate(names)}}},
                        lambda m, prompt, completion: (prompt + completion) * 1e-6,
                        ObservedLatency())
    for n in names:
        for j in range(2000):
            selector.observe(n, 0.1 + j * 1e-5)
    return selector


def _time(selector: Selector, model: str, n: int) -> dict[str, float]:
    principal = Principal("k", "t")
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    samples = []
    for _ in range(n):
        request = parsed("chat", dict(body), RequestLimits(4, 4096), "r", HEADERS, 80)
        started = time.perf_counter()
        selector.choose(request, principal)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {"p50_us": 1e6 * statistics.median(samples),
            "p99_us": 1e6 * samples[int(0.99 * len(samples))], "n": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/selection")
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    for k in (2, 8):
        selector = _selector(k)
        results[f"catalog_model_{k}"] = _time(selector, "m0", args.requests)  # not a route
        results[f"selection_{k}_candidates"] = _time(selector, "s", args.requests)
        print(f"[selection] {k} candidates: {results[f'selection_{k}_candidates']}",
              flush=True)
    results["command"] = "python -m loadtests.selection_bench " + " ".join(
        argv or sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
