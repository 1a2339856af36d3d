"""What rollouts cost and how fast they act (BENCHMARKS.md, "Rollouts").

- `--only decision`: the variant decision's added time per request, in process, against the
  same request path with no rollout (same run, interleaved repeats): the sticky subject,
  the split (BLAKE2b of the subject), the observation buffered for the gates, the label.
- `--only live`: on a stack of its own (`loadtests.rollout_stack`), open-loop streamed
  requests at `--rate`; for each gate setting, a canary of the failing variant and one of
  the slow variant: the time from its start (it is broken from its first request) to its
  rollback, the canary requests it took, and the users' requests it failed meanwhile; then
  a healthy canary through 5, 10, 25, 50, 100%: the time to its promotion.

    python -m loadtests.rollout_bench [--only decision|live] [--rate 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx

from loadtests import own_stack
from loadtests.rollout_stack import FAILING, SLOW, write_profile
from sluice.observability.outcome import Outcome
from sluice.rollouts import state as ops
from sluice.rollouts.assignment import subject
from sluice.rollouts.controller import Rollouts
from sluice.schema.rollouts import RolloutSettings, RolloutSpec

PORT, REDIS_PORT = 8870, 6433
MODELS = {"small": ("small", "v1"), "small@v2": ("small", "v2"), "large": ("large", "v1")}


def _per_call_ns(rollouts: Rollouts, n: int) -> float:
    headers = {"x-sluice-user": "user-42"}
    outcome = Outcome(200, "small", "direct", "miss", 0.0, 0.2, 0.05)
    started = time.perf_counter_ns()
    for i in range(n):
        who = subject(headers, "", f"req-{i}", "x-sluice-user")
        model = rollouts.route("small", who)
        outcome.model = model
        rollouts.observe(outcome)
        rollouts.label(model)
    return (time.perf_counter_ns() - started) / n


def decision(n: int, repeats: int) -> dict[str, Any]:
    settings = RolloutSettings()
    none = Rollouts(settings, None, MODELS, set(MODELS))
    canary = Rollouts(settings, None, MODELS, set(MODELS))
    spec = RolloutSpec(model="small", to="v2", steps=(25, 50, 100))
    canary.restored({"small": ops.begin("small-v2-bench", spec, "small", 0.0)})
    runs: dict[str, list[float]] = {"none": [], "canary": []}
    for _ in range(repeats):  # interleaved: drift hits both alike
        runs["none"].append(_per_call_ns(none, n))
        canary._buffer.clear()  # what the background flush does every poll
        runs["canary"].append(_per_call_ns(canary, n))
    p50 = {k: statistics.median(v) for k, v in runs.items()}
    return {"calls": n, "repeats": repeats, "ns_per_request_p50": p50,
            "added_ns": p50["canary"] - p50["none"], "runs": runs}


# ---- live ------------------------------------------------------------------------------

class OpenLoop:
    """Streamed chat requests at a fixed rate, each from a new user, until stopped."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.answers: list[tuple[float, int, str | None]] = []  # (sent, status, variant)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(64)
        self._client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, sent: float) -> None:
        body = {"model": "small", "stream": True, "max_tokens": 8, "min_tokens": 8,
                "messages": [{"role": "user", "content": f"hi {uuid.uuid4().hex[:6]}"}]}
        try:
            with self._client.stream("POST", f"{self.url}/v1/chat/completions", json=body,
                                     headers={"x-sluice-user": uuid.uuid4().hex}) as r:
                r.read()
            self.answers.append((sent, r.status_code, r.headers.get("x-sluice-variant")))
        except httpx.HTTPError:
            self.answers.append((sent, 0, None))

    def _run(self) -> None:
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = start + i / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
            self._pool.submit(self._one, time.time())
            i += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._client.close()


def _admin(url: str, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
    r = httpx.request(method, f"{url}/v1/admin/rollouts{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def _canary(url: str, rate: float, to: str, gates: dict[str, Any], steps: list[int],
            step_s: float, until: str, timeout_s: float) -> dict[str, Any]:
    with OpenLoop(url, rate) as load:
        time.sleep(3)  # the load is steady before the canary starts
        started = _admin(url, "POST", "", {"model": "small", "to": to, "steps": steps,
                                           "step_s": step_s, "gates": gates})
        t0 = started["created"]
        deadline = time.monotonic() + timeout_s
        status = started
        while status["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = _admin(url, "GET", "/small")
    ended = status["history"][-1]["t"] if status["status"] != "running" else None
    window = [a for a in load.answers if a[0] >= t0 and (ended is None or a[0] <= ended)]
    if status["status"] == "running":
        _admin(url, "POST", "/small/abort")
    return {"to": to, "outcome": status["status"], "reason": status.get("reason", ""),
            "seconds": None if ended is None else round(ended - t0, 1),
            "canary_requests": status["measured"]["arms"]["candidate"]["requests"],
            "user_requests": len(window),
            "users_failed": sum(1 for a in window if a[1] != 200),
            "history": [(round(e["t"] - t0, 1), e["event"], e["share"])
                        for e in status["history"]]}


def live(rate: float, min_requests: list[int], parts: set[str]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sluice-rollout-bench-"))
    profile = write_profile(tmp, {"poll_s": 1.0, "evaluate_s": 5.0})
    print(f"[rollout bench] starting a stack with five engines ({tmp}) ...", flush=True)
    proc = own_stack.serve(profile, tmp / "serve.log", PORT, REDIS_PORT)
    url = f"http://127.0.0.1:{PORT}"
    results: list[dict[str, Any]] = []
    try:
        for m in (min_requests if "rollback" in parts else ()):
            gates = {"min_requests": m}  # the shipped gates otherwise (95%, +1 point, 1.2x p95)
            for to in (FAILING, SLOW):
                print(f"[rollout bench] canary small@{to}, min_requests {m}, "
                      f"{rate:g} req/s ...", flush=True)
                r = _canary(url, rate, to, gates, [5, 10, 25, 50, 100], 60, "rolled_back",
                            timeout_s=3 * m / (rate * 0.05) + 120)
                r["min_requests"] = m
                print(f"[rollout bench]   {json.dumps(r)}", flush=True)
                results.append(r)
        if "promote" in parts:
            # a good canary must show it is not worse: with 0 errors, +1 point (the default
            # margin) takes ~380 canary requests per step, +5 points ~75
            m = min(min_requests)
            gates = {"min_requests": m, "error_margin": 0.05}
            print(f"[rollout bench] healthy canary small@v2, {gates} ...", flush=True)
            need = max(m, 75)
            r = _canary(url, rate, "v2", gates, [5, 10, 25, 50, 100], 10, "promoted",
                        timeout_s=sum(2 * need / (rate * s / 100) for s in (5, 10, 25, 50)))
            r["gates"] = gates
            print(f"[rollout bench]   {json.dumps(r)}", flush=True)
            results.append(r)
    finally:
        own_stack.stop(proc)
    return {"rate": rate, "canaries": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", choices=("decision", "live"))
    p.add_argument("--rate", type=float, default=16.0)
    p.add_argument("--min-requests", default="200,50", help="gate settings to measure")
    p.add_argument("--parts", default="rollback,promote", help="live: which canaries")
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--out", default="bench-results/rollouts")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if args.only in (None, "decision"):
        report["decision"] = decision(args.calls, 7)
        d = report["decision"]
        print(f"[rollout bench] decision: {d['ns_per_request_p50']} ns per request; "
              f"added {d['added_ns']:.0f} ns", flush=True)
    if args.only in (None, "live"):
        report["live"] = live(args.rate, [int(x) for x in args.min_requests.split(",")],
                              set(args.parts.split(",")))
    (out / f"report-{args.only or 'all'}.json").write_text(json.dumps(report, indent=1))
    print(f"[rollout bench] wrote {out}")


if __name__ == "__main__":
    main()
