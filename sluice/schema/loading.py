"""Reading the config files: a profile with the catalog and routing file it names.

YAML in, validated frozen models out, checking that every classifier a routing file names
is the file that was fitted (its SHA-256). Imports nothing but the schema, so a tool that
only reads the config pays for no serving framework, store client or ML library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.schema.artifact_hash import check_artifact
from sluice.schema.catalog import Catalog
from sluice.schema.platform import PlatformConfig, Profile
from sluice.schema.routing import RoutingConfig


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_platform_config(profile_path: Path, root: Path | None = None) -> PlatformConfig:
    """Load and validate a profile and the catalog it names."""
    profile = Profile.model_validate(load_yaml(profile_path))
    catalog_path = (profile_path.parent / profile.catalog).resolve()
    catalog = Catalog.model_validate(load_yaml(catalog_path))
    routing = None
    if profile.routing:
        routing = load_routing_config((profile_path.parent / profile.routing).resolve())
    return PlatformConfig(
        profile=profile, catalog=catalog, root=root or catalog_path.parent.parent,
        routing=routing,
    )


def load_routing_config(path: Path) -> RoutingConfig:
    """Validate a routing file and check that every artifact it names is the one fitted."""
    routing = RoutingConfig.model_validate({**load_yaml(path), "base_dir": path.parent})
    for i, route in enumerate(routing.routes):
        stages = (("pre_router", route.pre_router), ("judge", route.judge))
        for name, stage in stages:
            artifact = getattr(stage, "artifact", None)
            if artifact is not None:
                try:
                    check_artifact(routing.artifact_path(artifact), artifact.sha256)
                except ValueError as exc:
                    raise ValueError(f"{path}: routes[{i}].{name}.artifact: {exc}") from None
    for i, selection in enumerate(routing.selections):
        if selection.quality is not None:
            try:
                check_artifact(routing.artifact_path(selection.quality),
                               selection.quality.sha256)
            except ValueError as exc:
                raise ValueError(f"{path}: selections[{i}].quality: {exc}") from None
    return routing
