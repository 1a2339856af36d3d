"""Fitted routers and judges on disk: a joblib file whose SHA-256 the routing config records.

joblib is what scikit-learn documents for persisting its estimators. Because unpickling runs
code, a file is only loaded when its hash matches the one in the (reviewed) routing config.
"""

from __future__ import annotations

from pathlib import Path

import joblib

from sluice.router.features import Embedder
from sluice.router.scorers import SCORERS, LogisticScorer
from sluice.schema.artifact_hash import ArtifactError, check_artifact, sha256_file

FORMAT = 1


def save_scorer(kind: str, scorer: LogisticScorer, path: Path) -> str:
    """Write the fitted scorer; return the file's SHA-256."""
    if kind not in SCORERS:
        raise ArtifactError(f"unknown scorer kind '{kind}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump({"format": FORMAT, "kind": kind, "pipeline": scorer.pipeline}, path)
    return sha256_file(path)


def load_scorer(kind: str, path: Path, sha256: str, embedder: Embedder) -> LogisticScorer:
    """Verify the hash, then load; the stored kind must be the configured one."""
    check_artifact(path, sha256)
    blob = joblib.load(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a Sluice scorer artifact (format {FORMAT})")
    if blob.get("kind") != kind:
        raise ArtifactError(f"{path}: holds a '{blob.get('kind')}' scorer, config says '{kind}'")
    return SCORERS[kind](embedder).with_pipeline(blob["pipeline"])
