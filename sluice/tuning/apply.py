"""`sluice tune --apply`: the winning settings written into the profile's entry for the model,
with where they came from, keeping the rest of the file (comments, order, flow style) as it
was. ruamel.yaml does the round trip: PyYAML drops every comment of a file it rewrites, and a
profile's comments are its documentation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from sluice.schema.platform import ModelDeployment
from sluice.tuning.space import EngineSettings


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def marker(model: str) -> str:
    """What each provenance comment line of `model` starts with."""
    return f"[sluice tune {model}]"


def apply_settings(profile: Path, model: str, settings: EngineSettings, provenance: str) -> str:
    """Write `settings` into `profile`'s `models.<model>` (its other fields kept), with
    `provenance` as the comment above it (an earlier tune's comment replaced); returns the
    new text (already written)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    tag = f"# {marker(model)}"
    data = yaml.load("".join(line for line in profile.read_text().splitlines(keepends=True)
                             if not line.lstrip().startswith(tag)))
    models = data.get("models")
    if not isinstance(models, CommentedMap) or model not in models:
        raise ValueError(f"{profile} deploys no model '{model}' (its `models:` section)")
    current = ModelDeployment.model_validate(_plain(dict(models[model])))
    update = settings.deployment_update(dict(current.engine_kwargs))
    entry = CommentedMap(models[model])
    entry["engine_kwargs"] = CommentedMap(update["engine_kwargs"])
    if "chunked_prefill" in update:
        entry["chunked_prefill"] = CommentedMap(
            update["chunked_prefill"].model_dump(exclude_none=True))
    ModelDeployment.model_validate(_plain(dict(entry)))  # still a valid deployment
    entry.fa.set_block_style()
    models[model] = entry
    models.yaml_set_comment_before_after_key(
        model, before="\n".join(f"{marker(model)} {line}" for line in provenance.splitlines()),
        indent=2)
    out = io.StringIO()
    yaml.dump(data, out)
    text = out.getvalue()
    profile.write_text(text)
    return text
