"""Cross-process KV reuse through Redis with LMCache and Sluice's CPU device connector.

Engine A (one process) computes a long prompt and LMCache stores its KV chunks in a real
redis-server; engine B, a later, separate process that never saw the prompt, loads them
instead of computing them, and its greedy output and log-probabilities equal a recompute.
The prompt ends mid-block, where a wrong KV layout would show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.cache_tier.kv_tier import engine_env
from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.schema.caches import KVTierConfig

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("kv_probe.py")
REDIS_PORT = 6397


def _run(prompt: str, env: dict[str, str], use_tier: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(ROOT / "models/demo/small"), prompt,
         "1" if use_tier else "0"],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_second_engine_loads_the_prefix_from_redis(tmp_path: Path) -> None:
    words = ["river", "mill", "weir", "bridge", "stone", "water", "boat", "harvest", "road", "lantern"]
    prompt = " ".join(words[i % len(words)] + str(i % 7) for i in range(330))
    with LocalRedisServer(tmp_path, port=REDIS_PORT, appendonly=False) as redis:
        env = engine_env(KVTierConfig(enabled=True, chunk_size=16), redis.url)
        a = _run(prompt, env, use_tier=True)
        assert a["prompt_tokens"] % 128 != 0  # ends mid-block
        b = _run(prompt, env, use_tier=True)
    plain = _run(prompt, {"PYTHONHASHSEED": "0"}, use_tier=False)
    assert b["cached"] >= 0.9 * b["prompt_tokens"], b
    assert b["tokens"] == plain["tokens"] == a["tokens"]
    assert b["logprobs"] == pytest.approx(plain["logprobs"], abs=1e-3)
