"""Exact-match cache hit vs engine call, same request, same run, alternating.

    python -m loadtests.cache_bench --url http://127.0.0.1:8000 --requests 200

Needs a running Sluice (`make serve`). The engine call is the same request sent with
`Cache-Control: no-cache` (the lookup is skipped, the engine answers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid

import httpx


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    body = {"model": "small", "temperature": 0, "max_tokens": args.max_tokens,
            "messages": [{"role": "user", "content": f"cache bench {uuid.uuid4().hex}"}]}
    url = f"{args.url}/v1/chat/completions"
    samples: dict[str, list[float]] = {"hit": [], "engine": []}
    with httpx.Client(timeout=60) as client:
        client.post(url, json=body)  # store
        for i in range(args.requests):
            for kind, headers in (("hit", {}), ("engine", {"cache-control": "no-cache"})):
                start = time.perf_counter()
                resp = client.post(url, json=body, headers=headers)
                elapsed = (time.perf_counter() - start) * 1000
                expected = "hit" if kind == "hit" else "miss"
                if resp.status_code != 200 or resp.headers["x-sluice-cache"] != expected:
                    print(f"unexpected {resp.status_code} {resp.headers.get('x-sluice-cache')}",
                          file=sys.stderr)
                    return 1
                samples[kind].append(elapsed)
            if (i + 1) % 50 == 0:
                print(f"[cache-bench] {i + 1}/{args.requests}", file=sys.stderr, flush=True)
    result = {k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "mean_ms": statistics.mean(v)}
              for k, v in samples.items()}
    result["ratio_p50"] = result["engine"]["p50_ms"] / result["hit"]["p50_ms"]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"result": result, "samples": samples, "max_tokens": args.max_tokens}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
