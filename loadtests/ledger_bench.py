"""What accounting costs: the ledger's write throughput, and the ingress's per-request work.

    python -m loadtests.ledger_bench --records 20000 --rounds 3 --out bench-results/ledger

1. Store throughput, against a real redis-server started here (append-only on, as the local
   profile runs it). The ledger's idempotent Lua append (dedupe key + XADD + four spend
   counters per record) against the plain alternative, a pipelined XADD of the same fields
   with no dedupe and no counters. Same records, same batch size, rounds alternating.
2. Hot-path cost per request, in-process: settling a JSON answer and a 64-event stream
   (sluice.pipeline.settlement: price, outcome, meter, `Accountant.settle` with the ledger
   record buffered) and rendering it, against rendering the same body untouched.
3. What `ledger.sync` adds to each answer: requests arriving open-loop at a fixed rate
   each settle a record, then (sync) wait until it is written before their last bytes,
   against the same arrivals with no wait (the record written in the background): the
   wait's percentiles, and the store round trips the waiting requests shared.
Prints progress per round; writes results.json and a bar plot. `--only sync` runs part 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.responses import Response, StreamingResponse

from sluice import sse
from sluice.accounting.accountant import Accountant, Admission
from sluice.accounting.budgets import Verdict
from sluice.accounting.ledger import LedgerConfig, LedgerRecord, LedgerWriter
from sluice.accounting.response_cost import UsagePricer
from sluice.accounting.tenancy import Principal
from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.cache_tier.redis_target import async_client
from sluice.deployments.http import render
from sluice.observability.metrics import Metrics
from sluice.observability.request_meter import RequestMeter
from sluice.pipeline.answer import Answer
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.settlement import Settlement
from sluice.schema.accounting import AccountingConfig, Pricing

USAGE = {"prompt_tokens": 812, "completion_tokens": 64,
         "prompt_tokens_details": {"cached_tokens": 512}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(n: int, tag: str) -> list[LedgerRecord]:
    now = time.time()
    return [LedgerRecord(request_id=f"{tag}-{i}", ts=now, key_id=f"key-{i % 20}",
                         tenant=f"tenant-{i % 5}", tags=("search", "beta"), model="auto",
                         models=("small", "large"), route="small>large", status=200,
                         cache="miss", prompt_tokens=812, cached_tokens=512,
                         completion_tokens=64, latency_s=0.8, ttft_s=0.12,
                         cost_usd=0.000123) for i in range(n)]


async def _ledger_rate(url: str, n: int, batch: int, tag: str) -> float:
    client = async_client(url, 5.0)
    writer = LedgerWriter(client, LedgerConfig(batch=batch, buffer_max=n + 1,
                                               stream=f"bench:{tag}"))
    for record in _records(n, tag):
        writer._buffer.append(record)  # queued without starting the background task
    started = time.perf_counter()
    assert await writer.flush()
    elapsed = time.perf_counter() - started
    assert writer.counters["written"] == n
    await client.aclose()
    return n / elapsed


async def _plain_rate(url: str, n: int, batch: int, tag: str) -> float:
    client = async_client(url, 5.0)
    records = _records(n, tag)
    started = time.perf_counter()
    for i in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        for record in records[i:i + batch]:
            pipe.xadd(f"bench:{tag}", record.fields())
        await pipe.execute()
    elapsed = time.perf_counter() - started
    await client.aclose()
    return n / elapsed


def _hot_path(n: int) -> dict[str, float]:
    """Microseconds per request: settlement + render vs rendering the same body untouched,
    JSON and 64-event stream. Settlement is the ingress's own (sluice.pipeline.settlement)
    with a real Accountant whose ledger buffers records without writing them."""
    price = Pricing.model_validate({"mode": "tokens", "tokens": {"input_per_1m": 0.5,
                                                                 "output_per_1m": 1.5}})
    pricer = UsagePricer({"small": price})
    whole = {"id": "c", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "word " * 64}, "finish_reason": "stop"}],
        "usage": USAGE}
    events = [f'data: {{"id":"s","choices":[{{"index":0,"delta":{{"content":"w{i} "}}}}]}}\n\n'
              for i in range(64)]
    events += [f'data: {json.dumps({"id": "s", "choices": [], "usage": USAGE})}\n\n',
               "data: [DONE]\n\n"]
    body = {"model": "small", "prompt": "p" * 3000}

    async def run() -> dict[str, float]:
        accountant = Accountant(AccountingConfig(), "redis://127.0.0.1:1",
                                lambda coro: coro.close(), Metrics())
        assert accountant.ledger is not None
        accountant.ledger._ensure_running = lambda: None  # type: ignore[method-assign]
        metrics = Metrics()

        async def engine_events() -> Any:
            for i, e in enumerate(events):
                yield sse.read(e, parse_first=i == 0)

        async def texts() -> Any:
            for e in events:
                yield e

        requests = {stream: parsed("completions", {**body, "stream": stream},  # parsed once:
                                   RequestLimits(8, 4096), "r", {})  # not settlement's work
                    for stream in (False, True)}

        async def accounted(stream: bool) -> Response:
            settlement = Settlement(RequestMeter(metrics), None, accountant, pricer, "r")
            settlement.admitted(Admission(Principal("k", "t"), ("a",), time.time(),
                                          Verdict("ok")))
            settlement.parsed(requests[stream], known_model=True)
            answer = (Answer("small", "small", "miss", events=engine_events()) if stream
                      else Answer("small", "small", "miss", whole=dict(whole)))
            return render(await settlement.settle(answer))

        out: dict[str, float] = {}
        for name, make in (
                ("json_plain", lambda: _ready(Response(json.dumps(whole),
                                                       media_type="application/json"))),
                ("json_accounted", lambda: accounted(False)),
                ("stream_plain", lambda: _ready(StreamingResponse(
                    texts(), media_type="text/event-stream"))),
                ("stream_accounted", lambda: accounted(True))):
            started = time.perf_counter()
            for _ in range(n):
                response = await make()
                if isinstance(response, StreamingResponse):
                    async for _chunk in response.body_iterator:
                        pass
                accountant.ledger._buffer.clear()
            out[name] = (time.perf_counter() - started) / n * 1e6
        return out

    return asyncio.run(run())


async def _ready(response: Response) -> Response:
    return response


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(["ledger append\n(Lua, idempotent)", "plain XADD"],
          [results["ledger_rps_median"], results["plain_rps_median"]], color=["C0", "C7"])
    a.set_ylabel("records / s (one client)")
    a.set_title("Ledger store throughput")
    hot = results["hot_path_us"]
    names = ["json_plain", "json_accounted", "stream_plain", "stream_accounted"]
    b.bar(names, [hot[n] for n in names], color=["C7", "C0", "C7", "C0"])
    b.set_ylabel("µs per request")
    b.set_title("Ingress work per request")
    b.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def _sync_wait(url: str, rate: float, seconds: float, sync: bool, tag: str
                     ) -> dict[str, float]:
    """Open-loop arrivals at `rate`/s for `seconds`: each records, then waits for its
    record (sync) or not; the wait per request (ms) and the writes it took."""
    client = async_client(url, 5.0)
    writer = LedgerWriter(client, LedgerConfig(stream=f"bench:{tag}"))
    records = _records(int(rate * seconds), tag)
    waits: list[float] = []

    async def one(record: LedgerRecord) -> None:
        started = time.perf_counter()
        writer.record(record)
        if sync:
            assert await writer.written(2.0)
        waits.append((time.perf_counter() - started) * 1000)

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []
    for i, record in enumerate(records):
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        tasks.append(loop.create_task(one(record)))
    await asyncio.gather(*tasks)
    await writer.flush()
    written = writer.counters["written"]
    await writer.close()
    await client.aclose()
    waits.sort()
    return {"requests": len(records), "written": written,
            "p50_ms": waits[len(waits) // 2], "p99_ms": waits[int(len(waits) * 0.99)],
            "max_ms": waits[-1]}


def _sync_rounds(url: str, rates: list[float], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        row: dict[str, Any] = {"rate": rate}
        for sync in (False, True):  # the alternative first, same store, same arrivals
            mode = "sync" if sync else "background"
            row[mode] = asyncio.run(_sync_wait(url, rate, seconds, sync,
                                               f"s{rate:g}-{mode}"))
            print(f"[ledger-bench] {rate:g} req/s, {mode}: p50 {row[mode]['p50_ms']:.2f} ms,"
                  f" p99 {row[mode]['p99_ms']:.2f} ms", file=sys.stderr)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hot-path-requests", type=int, default=2000)
    parser.add_argument("--out", default="bench-results/ledger")
    parser.add_argument("--sync-rates", default="20,200,1000",
                        help="arrival rates (req/s) for the ledger.sync wait")
    parser.add_argument("--sync-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["sync"], default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.sync_rates.split(",")]
    if args.only == "sync":
        with LocalRedisServer(Path(tempfile.mkdtemp(prefix="ledger-bench-")),
                              port=_free_port()) as redis:
            rows = _sync_rounds(redis.url, rates, args.sync_seconds)
        (out / "sync.json").write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows, indent=2))
        return 0
    ledger, plain = [], []
    with LocalRedisServer(Path(tempfile.mkdtemp(prefix="ledger-bench-")),
                          port=_free_port()) as redis:
        for r in range(args.rounds):
            ledger.append(asyncio.run(_ledger_rate(redis.url, args.records, args.batch,
                                                   f"l{r}")))
            plain.append(asyncio.run(_plain_rate(redis.url, args.records, args.batch,
                                                 f"p{r}")))
            print(f"[ledger-bench] round {r + 1}/{args.rounds}: ledger {ledger[-1]:,.0f} "
                  f"rec/s, plain XADD {plain[-1]:,.0f} rec/s", file=sys.stderr)
        sync_rows = _sync_rounds(redis.url, rates, args.sync_seconds)
    print("[ledger-bench] hot path ...", file=sys.stderr)
    hot = _hot_path(args.hot_path_requests)
    results = {
        "records": args.records, "batch": args.batch, "rounds": args.rounds,
        "ledger_rps": ledger, "plain_rps": plain,
        "ledger_rps_median": statistics.median(ledger),
        "plain_rps_median": statistics.median(plain),
        "ledger_vs_plain": statistics.median(ledger) / statistics.median(plain),
        "hot_path_us": hot, "sync_wait": sync_rows,
        "json_overhead_us": hot["json_accounted"] - hot["json_plain"],
        "stream_overhead_us": hot["stream_accounted"] - hot["stream_plain"],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "ledger.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
