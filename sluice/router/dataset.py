"""Labeled routing data: per query, what the small and the large model answered and how well.

Reads the schema of `shared/data/routing/*.jsonl` (RouteLLM's evaluation outputs): either
boolean correctness (`weak_correct`/`strong_correct`, GSM8K-style) or judge scores
(`weak_score_turn1`/`strong_score_turn1`, MT-Bench-style, 1-10). Responses are optional:
a file that only records correctness still supports prompt-only routing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LabeledQuery:
    id: str
    prompt: str
    small_answer: str | None
    small_quality: float  # 0..1
    large_quality: float  # 0..1

    @property
    def small_is_enough(self) -> bool:
        """RouteLLM's label: the small model's answer is at least as good as the large one's."""
        return self.small_quality >= self.large_quality


class DatasetError(ValueError):
    pass


def _quality(row: dict[str, Any], side: str, line: int) -> float:
    if f"{side}_correct" in row:
        return 1.0 if row[f"{side}_correct"] else 0.0
    if f"{side}_score_turn1" in row:
        return float(row[f"{side}_score_turn1"]) / 10.0
    raise DatasetError(f"line {line}: no '{side}_correct' or '{side}_score_turn1' field")


def _prompt(row: dict[str, Any], line: int) -> str:
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    turns = row.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]
    raise DatasetError(f"line {line}: no 'prompt' string or 'turns' list")


def load_pairs(path: Path) -> list[LabeledQuery]:
    rows: list[LabeledQuery] = []
    with path.open() as fh:
        for i, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{i}: not JSON: {exc}") from None
            answer = row.get("weak_response", row.get("weak_response_turn1"))
            rows.append(LabeledQuery(
                id=str(row.get("id", i)),
                prompt=_prompt(row, i),
                small_answer=answer if isinstance(answer, str) else None,
                small_quality=_quality(row, "weak", i),
                large_quality=_quality(row, "strong", i),
            ))
    if len(rows) < 20:
        raise DatasetError(f"{path}: {len(rows)} rows; at least 20 are needed to split")
    return rows


def strata(queries: list[LabeledQuery]) -> np.ndarray:
    """Stratum per query for stratified splits: (small enough?, large better than median?)."""
    large = np.array([q.large_quality for q in queries])
    small_ok = np.array([q.small_is_enough for q in queries])
    return small_ok.astype(int) * 2 + (large > np.median(large)).astype(int)
