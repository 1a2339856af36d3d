"""The routing config rejects what it cannot run, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sluice.schema.loading import load_platform_config, load_routing_config
from sluice.schema.routing import RoutingConfig

ROOT = Path(__file__).resolve().parents[2]
MANUAL = {"method": "manual", "reason": "unit test"}


def _route(**over):
    base = {"name": "auto", "small": "small", "large": "large",
            "judge": {"kind": "logprob", "threshold": 0.5, "provenance": MANUAL}}
    return {**base, **over}


def test_shipped_routes_load_and_name_catalog_models() -> None:
    config = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    assert config.routing is not None
    auto = config.routing.routes[0]
    assert auto.name == "auto" and auto.judge is not None
    assert auto.judge.provenance.method == "calibrated"
    assert auto.judge.provenance.held_out["share_large"] > 0


@pytest.mark.parametrize(("route", "field"), [
    (_route(judge={"kind": "logprob", "threshold": 1.5, "provenance": MANUAL}), "threshold"),
    (_route(judge={"kind": "logprob", "threshold": 0.5, "provenance": {"method": "manual"}}),
     "reason"),
    (_route(judge={"kind": "logprob", "threshold": 0.5,
                   "provenance": {"method": "calibrated", "data": "x"}}), "data_sha256"),
    (_route(judge={"kind": "llm", "threshold": 0.5, "provenance": MANUAL}), "judge_model"),
    (_route(judge={"kind": "learned", "threshold": 0.5, "provenance": MANUAL}), "artifact"),
    (_route(judge={"kind": "magic", "threshold": 0.5, "provenance": MANUAL}), "kind"),
    (_route(judge=None, shadow={"fraction": 0.2}), "shadow"),
    (_route(large="small"), "different"),
    (_route(thresholds=3), "thresholds"),
])
def test_malformed_route_is_rejected_with_the_field_named(route, field) -> None:
    with pytest.raises(ValidationError) as exc:
        RoutingConfig.model_validate({"routes": [route]})
    assert field in str(exc.value)


def test_unknown_model_and_shadowed_name_are_rejected() -> None:
    bad_model = RoutingConfig.model_validate({"routes": [_route(large="huge")]})
    with pytest.raises(ValueError, match=r"routes\[0\]\.large: unknown model 'huge'"):
        bad_model.check_models({"small", "large"})
    shadowing = RoutingConfig.model_validate({"routes": [_route(name="small")]})
    with pytest.raises(ValueError, match="is a catalog model"):
        shadowing.check_models({"small", "large"})


def test_artifact_with_wrong_hash_is_rejected_at_load(tmp_path: Path) -> None:
    (tmp_path / "a.joblib").write_bytes(b"not the fitted file")
    (tmp_path / "routes.yaml").write_text(
        "routes:\n- name: auto\n  small: small\n  large: large\n  judge:\n"
        "    kind: answer-checks\n    threshold: 0.5\n"
        f"    artifact: {{path: a.joblib, sha256: '{'0' * 64}'}}\n"
        "    provenance: {method: manual, reason: test}\n")
    with pytest.raises(ValueError, match=r"routes\[0\]\.judge\.artifact: .*SHA-256"):
        load_routing_config(tmp_path / "routes.yaml")


def test_serve_refuses_a_malformed_routing_config_naming_the_field(tmp_path: Path,
                                                                     capsys) -> None:
    from sluice.cli import main

    (tmp_path / "routes.yaml").write_text(
        "routes:\n- name: auto\n  small: small\n  large: large\n  judge:\n"
        "    kind: logprob\n    threshold: 7\n    provenance: {method: manual, reason: t}\n")
    profile = (ROOT / "platform/profiles/local-cpu.yaml").read_text()
    profile = profile.replace("../catalog.yaml", str(ROOT / "platform/catalog.yaml"))
    profile = profile.replace("../routing/routes.yaml", str(tmp_path / "routes.yaml"))
    (tmp_path / "profile.yaml").write_text(profile)
    assert main(["serve", "--profile", str(tmp_path / "profile.yaml")]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "routes.0.judge.threshold" in err


def test_artifact_of_another_kind_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from sluice.router.artifacts import load_scorer, save_scorer
    from sluice.router.scorers import AnswerChecksJudge
    from sluice.schema.artifact_hash import ArtifactError

    class NoEmbedder:
        def embed(self, texts):
            return np.zeros((len(texts), 2))

    scorer = AnswerChecksJudge(NoEmbedder())
    scorer.with_pipeline("stand-in pipeline")
    sha = save_scorer("answer-checks", scorer, tmp_path / "a.joblib")
    assert load_scorer("answer-checks", tmp_path / "a.joblib", sha, NoEmbedder()).pipeline
    with pytest.raises(ArtifactError, match="holds a 'answer-checks' scorer"):
        load_scorer("learned", tmp_path / "a.joblib", sha, NoEmbedder())
