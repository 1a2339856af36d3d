"""The engine settings `sluice tune` searches, and what one trial's choice makes of a model's
deployment.

Only settings that change how an engine serves under load, each in the form the pinned vLLM
(0.32) accepts on the profile's device:

- `max_num_seqs`: sequences batched per engine step (log-uniform between the bounds);
- chunked prefill on or off, and when on its per-step token budget (`max_num_batched_tokens`);
- `block_size`: tokens per KV-cache block (the CPU backend wants multiples of 32 and defaults
  to 128; CUDA's attention backends take 16 or 32 among others);
- KV-cache space: `kv_cache_memory_bytes` on CPU, in whole GiB (vLLM's legacy
  `VLLM_CPU_KVCACHE_SPACE`, which the profiles set, would override it: `llm_config_for` sets
  that variable to the same amount for a model that sets this), `gpu_memory_utilization` on
  a GPU.

Asynchronous scheduling is not offered: the CPU platform turns it off whatever is asked.
Sampling settings are not searched: the demo models' random weights give no quality signal
to trade against (README, "Tuning engine settings").
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import Field, model_validator

from sluice.schema.base import Frozen
from sluice.schema.serving import ChunkedPrefill

GIB = 1 << 30


class Suggests(Protocol):
    """What a search proposes values with (an Optuna trial, or `optuna.trial.FixedTrial`)."""

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = ...) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


class TuneSpace(Frozen):
    """Where the search looks. Every list is the choices; an empty list leaves that setting
    at the profile's value."""

    max_num_seqs: tuple[int, int] = Field(default=(4, 64), description="Bounds of the "
                                          "sequences batched per step (log-uniform).")
    chunked_prefill: tuple[bool, ...] = Field(default=(True, False), description="Chunked "
                                              "prefill on, off, or both tried.")
    max_num_batched_tokens: tuple[int, ...] = Field(
        default=(256, 512, 1024, 2048), description="Step budgets tried with chunking on.")
    block_size: tuple[int, ...] = Field(default=(), description="Tokens per KV-cache block.")
    kv_cache_gib: tuple[int, ...] = Field(default=(), description="CPU: KV-cache space in "
                                          "whole GiB (what VLLM_CPU_KVCACHE_SPACE counts).")
    gpu_memory_utilization: tuple[float, ...] = Field(default=(), description="GPU: the "
                                                      "share of GPU memory the engine takes.")

    @model_validator(mode="after")
    def _ordered(self) -> TuneSpace:
        low, high = self.max_num_seqs
        if not 1 <= low <= high:
            raise ValueError("max_num_seqs bounds must satisfy 1 <= low <= high")
        if any(g < 1 for g in self.kv_cache_gib):
            raise ValueError("kv_cache_gib: whole GiB, at least 1")
        return self

    @classmethod
    def for_device(cls, device: str) -> TuneSpace:
        if device == "cpu":
            return cls(block_size=(32, 64, 128, 256), kv_cache_gib=(1, 2, 4))
        return cls(max_num_seqs=(16, 512), max_num_batched_tokens=(512, 2048, 8192, 16384),
                   block_size=(16, 32), gpu_memory_utilization=(0.8, 0.9, 0.95))


class EngineSettings(Frozen):
    """One point of the space: what a trial deploys (None: the profile's value)."""

    max_num_seqs: int | None = Field(default=None, description="vLLM's max_num_seqs.")
    chunked_prefill: ChunkedPrefill | None = Field(default=None, description="On or off, "
                                                   "and its step budget.")
    block_size: int | None = Field(default=None, description="vLLM's block_size.")
    kv_cache_gib: int | None = Field(default=None, ge=1, description="CPU: KV-cache space, "
                                     "whole GiB (kv_cache_memory_bytes).")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1,
                                                 description="GPU: vLLM's setting.")

    def engine_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.max_num_seqs is not None:
            out["max_num_seqs"] = self.max_num_seqs
        if self.block_size is not None:
            out["block_size"] = self.block_size
        if self.kv_cache_gib is not None:
            out["kv_cache_memory_bytes"] = self.kv_cache_gib * GIB
        if self.gpu_memory_utilization is not None:
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
        return out

    def deployment_update(self, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fields of a ModelDeployment (`model_copy(update=...)`) that carry these
        settings, over the deployment's own `engine_kwargs`."""
        update: dict[str, Any] = {"engine_kwargs": {**engine_kwargs, **self.engine_kwargs()}}
        if self.chunked_prefill is not None:
            update["chunked_prefill"] = self.chunked_prefill
        return update

    def label(self) -> str:
        parts = [f"seqs={self.max_num_seqs}"] if self.max_num_seqs else []
        if self.chunked_prefill is not None:
            parts.append(f"chunk={self.chunked_prefill.max_num_batched_tokens}"
                         if self.chunked_prefill.enabled else "chunk=off")
        if self.block_size:
            parts.append(f"block={self.block_size}")
        if self.kv_cache_gib:
            parts.append(f"kv={self.kv_cache_gib}GiB")
        if self.gpu_memory_utilization:
            parts.append(f"gpu_mem={self.gpu_memory_utilization:g}")
        return " ".join(parts) or "defaults"


def suggest(trial: Suggests, space: TuneSpace) -> EngineSettings:
    """The settings a trial tries: one draw per setting the space names."""
    low, high = space.max_num_seqs
    chunked: ChunkedPrefill | None = None
    if space.chunked_prefill:
        enabled = bool(trial.suggest_categorical("chunked_prefill", list(space.chunked_prefill)))
        budget = (int(trial.suggest_categorical("max_num_batched_tokens",
                                                list(space.max_num_batched_tokens)))
                  if enabled and space.max_num_batched_tokens else None)
        chunked = ChunkedPrefill(enabled=enabled, max_num_batched_tokens=budget)

    def pick(name: str, choices: tuple[Any, ...]) -> Any:
        return trial.suggest_categorical(name, list(choices)) if choices else None

    return EngineSettings(
        max_num_seqs=trial.suggest_int("max_num_seqs", low, high, log=True),
        chunked_prefill=chunked,
        block_size=pick("block_size", space.block_size),
        kv_cache_gib=pick("kv_cache_gib", space.kv_cache_gib),
        gpu_memory_utilization=pick("gpu_memory_utilization", space.gpu_memory_utilization))
