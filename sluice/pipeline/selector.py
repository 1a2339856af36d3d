"""Selection routes at the request: the bars a request sets (or its route's defaults), the
candidates its key may use, each one's price for this request, and the choice
(`sluice.router.selection`, which documents the rule). The request's model becomes the
chosen one before its context is checked, so everything after (context policy, limits,
holds, caches, engines, the ledger) sees a catalog model; the answer says why in
`x-sluice-selection`. The latency it reads is what settlement feeds `observe` with."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

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
_TASK = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
Price = Callable[[str, int, int], float]  # (model, prompt tokens, completion tokens) -> USD


def _number(headers: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (low <= value <= high):  # (nan fails both)
        raise InvalidRequest(f"Header '{name}' must be a number in [{low:g}, {high:g}]; got "
                             f"{raw[:40]!r}.", param=name)
    return value


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

    def _bars(self, config: SelectionConfig, headers: Mapping[str, str]) -> Constraints:
        if not config.client_choice:
            return Constraints(config.task, config.max_ttft_ms, config.min_quality)
        task = headers.get(TASK, config.task)
        if not _TASK.match(task):
            raise InvalidRequest(f"Header '{TASK}' must be 1-64 of lowercase letters, digits "
                                 f"and '._-'; got {task[:40]!r}.", param=TASK)
        ttft = _number(headers, MAX_TTFT, 1, 10_000_000)
        quality = _number(headers, MIN_QUALITY, 0, 1)
        return Constraints(task, config.max_ttft_ms if ttft is None else ttft,
                           config.min_quality if quality is None else quality)

    def choose(self, request: ParsedRequest, principal: Principal) -> Selection | None:
        """None: not a selection route. Sets the request's model to the chosen one."""
        config = self._configs.get(str(request.llm.model))
        if config is None:
            return None
        bars = self._bars(config, request.headers)
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
