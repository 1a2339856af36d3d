"""`sluice tune`'s pure parts: the search space and what a trial's draw deploys (checked by the
pinned vLLM's own config builder), the score, the early stop, the Pareto front, and
`--apply`'s edit of a profile (comments kept, provenance written, an earlier one replaced)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pydantic
import pytest
import yaml

from sluice.capacity.analysis import StepStats
from sluice.deployments.llm_server import llm_config_for
from sluice.schema.loading import load_platform_config
from sluice.schema.serving import ChunkedPrefill
from sluice.tuning.apply import apply_settings, marker
from sluice.tuning.score import pareto_front, past_the_peak, score
from sluice.tuning.space import GIB, EngineSettings, TuneSpace, suggest

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "platform/profiles/local-cpu.yaml"
CONFIG = load_platform_config(PROFILE, root=ROOT)


def _step(users: int, good: int, requests: int = 100, ttft_p95_s: float = 0.2) -> StepStats:
    return StepStats(users=users, duration_s=10, requests=requests, errors=0,
                     throughput_rps=requests / 10, tokens_per_s=0, ttft_p50_s=0.1,
                     ttft_p95_s=ttft_p95_s, ttft_p99_s=0.3, tpot_p50_s=0.01, tpot_p95_s=0.02,
                     good=good)


def test_a_draw_names_every_setting_of_the_space_and_nothing_else() -> None:
    space = TuneSpace.for_device("cpu")
    settings = suggest(optuna.trial.FixedTrial({
        "chunked_prefill": True, "max_num_batched_tokens": 512, "max_num_seqs": 12,
        "block_size": 64, "kv_cache_gib": 2}), space)
    assert settings == EngineSettings(
        max_num_seqs=12, chunked_prefill=ChunkedPrefill(enabled=True, max_num_batched_tokens=512),
        block_size=64, kv_cache_gib=2)
    assert settings.engine_kwargs() == {"max_num_seqs": 12, "block_size": 64,
                                        "kv_cache_memory_bytes": 2 * GIB}
    off = suggest(optuna.trial.FixedTrial({"chunked_prefill": False, "max_num_seqs": 4,
                                           "block_size": 128, "kv_cache_gib": 1}), space)
    assert off.chunked_prefill == ChunkedPrefill(enabled=False)  # no budget drawn when off
    narrow = TuneSpace(max_num_seqs=(8, 8), chunked_prefill=())
    assert suggest(optuna.trial.FixedTrial({"max_num_seqs": 8}), narrow) == EngineSettings(
        max_num_seqs=8)
    with pytest.raises(pydantic.ValidationError):
        TuneSpace(max_num_seqs=(16, 8))


def test_sampled_settings_are_configs_the_pinned_vllm_accepts(monkeypatch) -> None:
    """Every draw of a real TPE sampler over the CPU space becomes engine arguments from which
    vLLM's EngineArgs builds its VllmConfig, with the drawn values in it (no engine started);
    the model's KV space wins over the profile's legacy VLLM_CPU_KVCACHE_SPACE."""
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    small = CONFIG.catalog.get("small")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(6):
        trial = study.ask()
        settings = suggest(trial, TuneSpace.for_device("cpu"))
        deployment = CONFIG.profile.models["small"].model_copy(
            update=settings.deployment_update({}))
        profile = CONFIG.profile.model_copy(
            update={"models": {**CONFIG.profile.models, "small": deployment}})
        llm = llm_config_for(CONFIG.model_copy(update={"profile": profile}), small)
        kwargs = {k: v for k, v in llm.engine_kwargs.items() if k in known}
        for name, value in llm.runtime_env["env_vars"].items():  # as the engine's process
            monkeypatch.setenv(name, value)  # sees them (the profile's legacy variable too)
        vllm = EngineArgs(model=CONFIG.model_source(small), **kwargs).create_engine_config()
        assert vllm.scheduler_config.max_num_seqs == settings.max_num_seqs
        assert vllm.cache_config.block_size == settings.block_size
        assert vllm.cache_config.kv_cache_memory_bytes == int(settings.kv_cache_gib * GIB)
        assert settings.chunked_prefill is not None
        assert vllm.scheduler_config.enable_chunked_prefill is settings.chunked_prefill.enabled
        if settings.chunked_prefill.enabled:
            assert (vllm.scheduler_config.max_num_batched_tokens
                    == settings.chunked_prefill.max_num_batched_tokens)
        assert llm.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == str(
            int(settings.kv_cache_gib))
        study.tell(trial, 1.0)
    shipped = llm_config_for(CONFIG, small)
    assert shipped.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"  # untouched


def test_the_score_is_the_best_steps_goodput_and_an_empty_trial_scores_zero() -> None:
    steps = [_step(4, 30), _step(8, 55, ttft_p95_s=0.4), _step(16, 20, ttft_p95_s=1.5)]
    best = score(steps)
    assert (best.goodput_rps, best.users, best.ttft_p95_s) == (5.5, 8, 0.4)
    assert score([]).goodput_rps == 0 and math.isinf(score([]).ttft_p95_s)
    nan = dataclasses.replace(_step(4, 0), ttft_p95_s=math.nan)
    assert math.isinf(score([nan]).ttft_p95_s)


def test_load_stops_once_goodput_passed_its_peak_or_attainment_collapsed() -> None:
    assert not past_the_peak([])
    assert not past_the_peak([_step(4, 40), _step(8, 70)])
    assert not past_the_peak([_step(4, 40), _step(8, 70), _step(16, 60)])  # within 25%
    assert past_the_peak([_step(4, 40), _step(8, 70), _step(16, 50)])
    assert past_the_peak([_step(4, 40, requests=100), _step(8, 45, requests=100)]) is True


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes() -> None:
    points = [(5.0, 0.4), (6.0, 0.5), (4.0, 0.3), (5.0, 0.6), (3.0, 0.35), (6.0, 0.5)]
    # (5, .6) loses to (5, .4); (3, .35) to (4, .3); the two (6, .5) tie and both stay
    assert pareto_front(points) == [2, 0, 1, 5]
    assert pareto_front([]) == []


def test_apply_writes_the_winner_and_its_provenance_and_keeps_the_profile(tmp_path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE.read_text().replace("../", f"{ROOT}/platform/"))
    win = EngineSettings(max_num_seqs=12, block_size=64, kv_cache_gib=2,
                         chunked_prefill=ChunkedPrefill(max_num_batched_tokens=512))
    apply_settings(profile, "small", win, "first tune")
    text = apply_settings(profile, "small", win, "second tune\n`sluice tune --trials 2`")
    assert f"# {marker('small')} second tune" in text
    assert "first tune" not in text  # an earlier tune's provenance is replaced
    original = [line for line in PROFILE.read_text().splitlines() if "small:" not in line]
    kept = text.splitlines()
    assert all(line in kept for line in original if line.strip().startswith("#"))
    config = load_platform_config(profile, root=ROOT)
    small = config.profile.models["small"]
    assert small.engine_kwargs == {"max_num_seqs": 12, "block_size": 64,
                                   "kv_cache_memory_bytes": 2 * GIB}
    assert small.chunked_prefill == ChunkedPrefill(max_num_batched_tokens=512)
    assert (small.min_replicas, small.max_replicas) == (1, 1)
    assert config.profile.models["large"] == CONFIG.profile.models["large"]
    assert yaml.safe_load(text)["engine_env"] == yaml.safe_load(PROFILE.read_text())[
        "engine_env"]
    with pytest.raises(ValueError, match="deploys no model 'medium'"):
        apply_settings(profile, "medium", win, "x")
