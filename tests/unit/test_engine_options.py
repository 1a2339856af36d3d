"""Speculative decoding and chunked prefill as profile options: what they become in the
engine's arguments, and that the pinned vLLM builds its configuration from them (its own
validation, no engine started)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydantic
import pytest

from sluice.deployments.llm_server import llm_config_for
from sluice.schema.loading import load_platform_config
from sluice.schema.platform import PlatformConfig
from sluice.schema.serving import ChunkedPrefill, Speculation

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)


def _with(model: str, **options: object) -> PlatformConfig:
    deployment = CONFIG.profile.models[model].model_copy(update=options)
    profile = CONFIG.profile.model_copy(
        update={"models": {**CONFIG.profile.models, model: deployment}})
    return CONFIG.model_copy(update={"profile": profile})


def _engine_kwargs(config: PlatformConfig, model: str) -> dict[str, object]:
    entry = next(m for m in config.catalog.models if m.name == model)
    return dict(llm_config_for(config, entry).engine_kwargs)


def test_ngram_speculation_and_chunked_prefill_become_vllms_arguments() -> None:
    config = _with("large", speculative=Speculation(method="ngram", num_speculative_tokens=4),
                   chunked_prefill=ChunkedPrefill(max_num_batched_tokens=256))
    kwargs = _engine_kwargs(config, "large")
    assert kwargs["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 4,
                                            "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    assert kwargs["enable_chunked_prefill"] is True
    assert kwargs["max_num_batched_tokens"] == 256
    assert "speculative_config" not in _engine_kwargs(CONFIG, "large")  # opt-in


def test_a_draft_model_is_another_catalog_model_resolved_to_its_source() -> None:
    config = _with("large", speculative=Speculation(method="draft", draft_model="small"))
    spec = _engine_kwargs(config, "large")["speculative_config"]
    small = next(m for m in CONFIG.catalog.models if m.name == "small")
    assert spec == {"method": "draft_model", "model": CONFIG.model_source(small),
                    "num_speculative_tokens": 3}
    with pytest.raises(pydantic.ValidationError, match="not another local catalog model"):
        PlatformConfig.model_validate(
            {**_with("large", speculative=Speculation(method="draft", draft_model="large"))
             .model_dump()})


@pytest.mark.parametrize("bad", [
    {"method": "ngram", "draft_model": "small"},
    {"method": "draft"},
    {"method": "ngram", "prompt_lookup_min": 5, "prompt_lookup_max": 3},
    {"method": "medusa"},
    {"method": "ngram", "num_speculative_tokens": 0},
])
def test_speculation_refuses_what_cannot_run(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Speculation.model_validate(bad)


def test_the_pinned_vllm_builds_its_config_from_the_options() -> None:
    """vLLM's own EngineArgs -> VllmConfig (model config read from the demo model's files,
    no weights loaded): the speculative and scheduler settings are what the profile said."""
    from vllm.engine.arg_utils import EngineArgs

    config = _with("small", speculative=Speculation(method="ngram", num_speculative_tokens=3),
                   chunked_prefill=ChunkedPrefill(max_num_batched_tokens=512))
    small = next(m for m in config.catalog.models if m.name == "small")
    known = {f.name for f in dataclasses.fields(EngineArgs)}  # (the rest: the frontend's)
    kwargs = {k: v for k, v in _engine_kwargs(config, "small").items() if k in known}
    vllm_config = EngineArgs(model=config.model_source(small), **kwargs).create_engine_config()
    assert vllm_config.speculative_config is not None
    assert vllm_config.speculative_config.method == "ngram"
    assert vllm_config.speculative_config.num_speculative_tokens == 3
    assert vllm_config.scheduler_config.max_num_batched_tokens == 512
    assert vllm_config.scheduler_config.enable_chunked_prefill is True
