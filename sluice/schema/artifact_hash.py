"""The hash check of the fitted classifiers a routing file names.

Here, not with the loader of the classifiers (sluice.router.artifacts, which needs joblib and
scikit-learn), because loading the config checks every artifact's SHA-256 before anything is
unpickled, and that needs no more than hashlib.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class ArtifactError(ValueError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_artifact(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    actual = sha256_file(path)
    if actual != sha256:
        raise ArtifactError(f"artifact {path} has SHA-256 {actual}, config says {sha256}")
