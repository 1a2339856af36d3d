"""Prompt compression: which requests' long context is shortened, by how much and how
(`sluice.compression`; applied by `sluice.pipeline.compress_stage`). Off unless the profile
or the request asks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sluice.schema.base import Frozen

Method = Literal["salience", "relevance"]


class CompressionPolicy(Frozen):
    """One model's (or route's) compression."""

    enabled: bool = Field(default=False, description="Compress this model's long chats "
                          "without being asked (a request's `x-sluice-compress: off` still "
                          "turns it off where clients may choose).")
    ratio: float = Field(default=0.6, gt=0, lt=1, description="Share of the compressible "
                         "prose kept, in tokens (0.6: about 40% fewer of those tokens).")
    method: Method = Field(default="relevance", description="'relevance': question-aware "
                           "(MiniLM and term overlap) with redundancy removal; 'salience': "
                           "the baseline (MiniLM similarity to the question and document).")
    min_prompt_tokens: int = Field(default=1000, ge=0, description="Prompts shorter than "
                                   "this are sent as they are (there is little to save, and "
                                   "much to lose).")
    max_prompt_tokens: int = Field(default=32_000, ge=1, description="Prompts longer than "
                                   "this are sent as they are: the bound on the CPU one "
                                   "request may take (about 0.25 s per 1,000 tokens here).")
    min_message_tokens: int = Field(default=64, ge=0, description="A message shorter than "
                                    "this (an instruction, a short turn) is kept whole, and "
                                    "so is a long message's first paragraph this short.")

    @model_validator(mode="after")
    def _bounds(self) -> CompressionPolicy:
        if self.min_prompt_tokens > self.max_prompt_tokens:
            raise ValueError("min_prompt_tokens must not exceed max_prompt_tokens")
        return self


class CompressionSettings(Frozen):
    """The compression policy of every model and route, and whether a client may ask."""

    default: CompressionPolicy = Field(default_factory=CompressionPolicy,
                                       description="Policy of a model or route not named "
                                       "below.")
    models: dict[str, CompressionPolicy] = Field(
        default_factory=dict, description="Policy per served model or route name.")
    client_choice: bool = Field(default=True, description="A request may ask with the "
                                "header `x-sluice-compress` (on, off, ratio=R, method=M).")

    def of(self, model: str) -> CompressionPolicy:
        return self.models.get(model, self.default)
