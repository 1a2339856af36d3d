"""Selection routes at the request: the bars a request sets (or its route's defaults), the
candidates its key may use, each one's price for this request, and the choice
(`sluice.router.selection`, which documents the rule). The request's model becomes the
chosen one before its context is checked, so everything after (context policy, limits,
holds, caches, engines, the ledger) sees a catalog model; the answer says why in
`x-sluice-selection`. The latency it reads is what settlement feeds `observe` with."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sluice.accounting.tenancy import Principal
from sluice.errors import InvalidRequest, SluiceError
from sluice.pipeline.request import ParsedRequest
from sluice.router.selection import (
    Constraints,
    ObservedLatency,
    Selection,
    candidates_for,
    select,
)
from sluice.schema.routing import SelectionConfig

TASK, MAX_TTFT, MIN_QUALITY = "x-sluice-task", "x-sluice-max-ttft-ms", "x-sluice-min-quality"
HEADER = "x-sluice-selection"
# what each header may say (the OpenAPI document states the same patterns): a value off its
# pattern is a 400 on every request, whatever its model, so the document and the ingress agree
PATTERNS = {TASK: r"[a-z0-9][a-z0-9._-]{0,63}",
            MAX_TTFT: r"[1-9][0-9]{0,6}(\.[0-9]+)?",  # ms, 1 to 9,999,999
            MIN_QUALITY: r"(0(\.[0-9]+)?|1(\.0+)?)"}  # 0 to 1
_SAYS = {TASK: "1-64 of lowercase letters, digits and '._-'",
         MAX_TTFT: "milliseconds, a number from 1 to 9999999", MIN_QUALITY: "a number from 0 to 1"}
_COMPILED = {name: re.compile(pattern) for name, pattern in PATTERNS.items()}
Price = Callable[[str, int, int], float]  # (model, prompt tokens, completion tokens) -> USD


@dataclass(frozen=True)
class AskedBars:
    """What the request's headers asked of a selection route (None: not said)."""

    task: str | None = None
    max_ttft_ms: float | None = None
    min_quality: float | None = None


def asked_bars(headers: Mapping[str, str]) -> AskedBars:
    """The selection headers, each checked against its pattern (a 400 naming it)."""
    said: dict[str, str] = {}
    for name, pattern in _COMPILED.items():
        raw = headers.get(name)
        if raw is None:
            continue
        if not pattern.fullmatch(raw):
            raise InvalidRequest(f"Header '{name}' must be {_SAYS[name]}; got {raw[:40]!r}.",
                                 param=name)
        said[name] = raw
    return AskedBars(said.get(TASK),
                     float(said[MAX_TTFT]) if MAX_TTFT in said else None,
                     float(said[MIN_QUALITY]) if MIN_QUALITY in said else None)


class Selector:
    def __init__(self, selections: Sequence[SelectionConfig],
                 quality: Mapping[str, Mapping[str, Mapping[str, float]]], price: Price,
                 latency: ObservedLatency) -> None:
        self._configs = {s.name: s for s in selections}
        self._quality, self._price, self.latency = quality, price, latency

    def __contains__(self, model: object) -> bool:
        return model in self._configs

    def observe(self, model: str, ttft_s: float) -> None:
        self.latency.observe(model, ttft_s)

    @staticmethod
    def _bars(config: SelectionConfig, asked: AskedBars) -> Constraints:
        if not config.client_choice:
            return Constraints(config.task, config.max_ttft_ms, config.min_quality)
        return Constraints(asked.task or config.task,
                           config.max_ttft_ms if asked.max_ttft_ms is None
                           else asked.max_ttft_ms,
                           config.min_quality if asked.min_quality is None
                           else asked.min_quality)

    def choose(self, request: ParsedRequest, principal: Principal,
               asked: AskedBars | None = None) -> Selection | None:
        """None: not a selection route. Sets the request's model to the chosen one."""
        config = self._configs.get(str(request.llm.model))
        if config is None:
            return None
        bars = self._bars(config, asked if asked is not None
                          else asked_bars(request.headers))
        allowed = []
        for name in config.candidates:
            try:
                principal.may_use(name)
            except SluiceError:
                continue
            allowed.append(name)
        if not allowed:
            principal.may_use(config.candidates[0])  # its 403, naming what the key may use
        prompt = request.prompt_tokens_guess()
        completion = request.max_output_tokens or config.expected_output_tokens
        candidates = candidates_for(
            allowed, lambda m: self._price(m, prompt, completion), self.latency,
            config.min_samples, config.window_s, self._quality.get(config.name, {}), bars.task)
        chosen = select(candidates, bars)
        request.llm.model = chosen.model
        return chosen
