"""Measured quality per task type and model, for selection routes (`sluice.router.selection`).

`measure` reads labeled routing data (one file per task type: what the small and the large
model answered each query, and how well: `sluice.router.dataset`) and gives each model's
mean quality on it, the numbers the offline evaluator reports as always-small and
always-large. `sluice route quality` writes them, with each file's hash and size, to the
YAML a selection route names (and hashes, as a cascade's artifacts are). `load` reads it
back, checked against that hash.

The file:

    tasks:
      gsm8k: {small: 0.636, large: 0.857}
    provenance:
      gsm8k: {data: ..., data_sha256: ..., queries: 1307, metric: ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sluice.router.dataset import load_pairs
from sluice.schema.artifact_hash import check_artifact, sha256_file

METRIC = ("mean of the data file's per-query quality: correctness (0/1) or judge score / 10 "
          "(sluice.router.dataset)")


def task_of(path: Path) -> str:
    """A data file's task type: its name without `_pairs` (gsm8k_pairs.jsonl: gsm8k)."""
    return path.stem.removesuffix("_pairs")


def measure(data: Mapping[str, Path], small: str, large: str) -> dict[str, Any]:
    """The quality document for data files by task type; `small`/`large`: the catalog
    models the data's weak and strong model stand for."""
    tasks: dict[str, dict[str, float]] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for task, path in data.items():
        queries = load_pairs(path)
        if not queries:
            raise ValueError(f"{path}: no queries")
        n = len(queries)
        tasks[task] = {small: round(sum(q.small_quality for q in queries) / n, 4),
                       large: round(sum(q.large_quality for q in queries) / n, 4)}
        provenance[task] = {"data": str(path), "data_sha256": sha256_file(path),
                            "queries": n, "metric": METRIC}
    return {"tasks": tasks, "provenance": provenance}


def load(path: Path, sha256: str) -> dict[str, dict[str, float]]:
    """quality[task][model], checked against the hash the routing config records."""
    check_artifact(path, sha256)
    document = yaml.safe_load(path.read_text()) or {}
    tasks = document.get("tasks")
    if not isinstance(tasks, dict):
        raise ValueError(f"{path}: no 'tasks' mapping")
    out: dict[str, dict[str, float]] = {}
    for task, models in tasks.items():
        if not isinstance(models, dict):
            raise ValueError(f"{path}: tasks.{task} is not a mapping of model to quality")
        out[str(task)] = {}
        for model, value in models.items():
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{path}: tasks.{task}.{model}: a quality in [0, 1], "
                                 f"got {value!r}")
            out[str(task)][str(model)] = float(value)
    return out
