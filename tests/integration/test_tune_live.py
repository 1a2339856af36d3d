"""`sluice tune` for real (#20): a two-trial Optuna search of `small`'s engine settings, each
trial a `sluice serve` of its own with the drawn settings and the capacity planner's stepped
Locust load against it, scored by goodput under the catalog's SLOs; then `--apply` into a copy
of the local profile.

Bounded: two trials of two 6-second steps (about 3 minutes in all, most of it two engines
starting), no side-by-side re-measurement (`--confirm-rounds 0`: BENCHMARKS.md has one), a
search space of 1 GiB of KV cache (beside nothing else: it runs `alone`, after the shared
stack has stopped).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sluice.schema.loading import load_platform_config
from sluice.tuning.apply import marker
from sluice.tuning.space import GIB

pytestmark = [pytest.mark.integration, pytest.mark.alone, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


def test_a_two_trial_tune_deploys_measures_scores_and_applies(tmp_path: Path) -> None:
    profile = tmp_path / "local-cpu.yaml"
    profile.write_text((ROOT / "platform/profiles/local-cpu.yaml").read_text()
                       .replace("../", f"{ROOT}/platform/"))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"max_num_seqs": [2, 32], "chunked_prefill": [True, False],
                                     "max_num_batched_tokens": [256, 2048],
                                     "block_size": [64, 128], "kv_cache_gib": [1]}))
    out = tmp_path / "tune"
    done = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "tune", "--profile", str(profile),
         "--model", "small", "--trials", "2", "--users", "2,4", "--step-s", "6",
         "--settle-s", "2", "--confirm-rounds", "0", "--space", str(space), "--apply",
         "--ready-timeout-s", "300", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=840, check=False)
    print(done.stdout[-6000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((out / "tune.json").read_text())
    records = report["records"]
    assert [r["number"] for r in records] == [0, 1]
    assert all(r["state"] in ("complete", "pruned") for r in records), records
    for r in records:  # each trial deployed what it drew and measured it under load
        assert r["steps"] and r["steps"][0]["users"] == 2 and r["steps"][0]["requests"] > 0
        assert r["settings"]["kv_cache_gib"] == 1
        assert 2 <= r["settings"]["max_num_seqs"] <= 32
        assert r["goodput_rps"] == pytest.approx(max(s["goodput_rps"] for s in r["steps"]),
                                                 abs=1e-3)
    complete = [r for r in records if r["state"] == "complete"]
    best = max(complete, key=lambda r: (r["goodput_rps"], -r["ttft_p95_s"]))
    assert best["goodput_rps"] > 0
    assert report["best"]["number"] == best["number"]
    assert best["number"] in report["pareto"]
    assert report["slo"] == load_platform_config(
        ROOT / "platform/profiles/local-cpu.yaml", root=ROOT).catalog.get("small").slo.model_dump()
    assert (out / "tune.png").stat().st_size > 10_000

    text = profile.read_text()
    assert f"# {marker('small')} " in text and "sluice tune --profile" in text
    small = load_platform_config(profile, root=ROOT).profile.models["small"]
    settings = best["settings"]
    assert small.engine_kwargs["max_num_seqs"] == settings["max_num_seqs"]
    assert small.engine_kwargs["block_size"] == settings["block_size"]
    assert small.engine_kwargs["kv_cache_memory_bytes"] == GIB
    assert small.chunked_prefill is not None
    assert small.chunked_prefill.enabled is settings["chunked_prefill"]["enabled"]
