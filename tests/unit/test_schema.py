from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sluice.schema.catalog import Catalog
from sluice.schema.loading import load_platform_config
from sluice.schema.platform import ModelDeployment, PlatformConfig, Profile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "platform" / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_shipped_profiles_validate(profile: Path) -> None:
    config = load_platform_config(profile, root=ROOT)
    assert {m.tier for m in config.catalog.models} == {"small", "large"}
    assert set(config.profile.models) == {m.name for m in config.catalog.models}


def _profile_dict() -> dict:
    return yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())


def test_unknown_profile_key_is_rejected_with_its_name() -> None:
    data = _profile_dict() | {"enigne_kwargs": {}}
    with pytest.raises(ValidationError, match="enigne_kwargs"):
        Profile.model_validate(data)


def test_nested_unknown_key_is_rejected() -> None:
    data = _profile_dict()
    data["ingress"] = {"prot": 8000}
    with pytest.raises(ValidationError, match="ingress.prot"):
        Profile.model_validate(data)


def test_replica_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        ModelDeployment(min_replicas=3, max_replicas=2)


def test_duplicate_and_reserved_model_names() -> None:
    m = {"name": "small", "source": "x", "tier": "small", "context_length": 10}
    with pytest.raises(ValidationError, match="duplicate"):
        Catalog.model_validate({"models": [m, m]})
    with pytest.raises(ValidationError, match="reserved"):
        Catalog.model_validate({"models": [m | {"name": "auto"}]})


def test_profile_must_deploy_exactly_the_catalog() -> None:
    config = load_platform_config(PROFILES[0], root=ROOT)
    models = dict(config.profile.models)
    models.pop("large")
    profile = config.profile.model_copy(update={"models": models})
    with pytest.raises(ValidationError, match="missing \\['large'\\]"):
        PlatformConfig(profile=profile, catalog=config.catalog, root=ROOT)


def test_config_is_frozen() -> None:
    config = load_platform_config(PROFILES[0], root=ROOT)
    with pytest.raises(ValidationError):
        config.profile.ingress.port = 1  # type: ignore[misc]


def test_local_sources_resolve_against_root_and_hub_ids_pass_through() -> None:
    config = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    small = config.catalog.by_tier("small")
    assert config.model_source(small) == str((ROOT / "models/demo/small").resolve())
    hub = small.model_copy(update={"source": "meta-llama/Llama-3.1-8B-Instruct"})
    assert config.model_source(hub) == "meta-llama/Llama-3.1-8B-Instruct"


def test_serve_proxy_port_is_apart_from_the_api_port() -> None:
    from sluice.schema.platform import IngressSettings

    assert IngressSettings(port=8000).serve_proxy_port == 8001  # direct: a port of its own
    assert IngressSettings(port=9000, proxy_port=9100).serve_proxy_port == 9100
    assert IngressSettings(port=8000, transport="proxy").serve_proxy_port == 8000
    with pytest.raises(ValueError, match="port of its own"):
        IngressSettings(port=8000, proxy_port=8000)


def test_metrics_port_is_off_ephemeral_or_a_port_of_its_own() -> None:
    from sluice.schema.platform import IngressSettings

    assert IngressSettings().metrics_port is None  # off: /metrics on the API port
    assert IngressSettings(metrics_port=0, transport="proxy").metrics_port == 0
    assert IngressSettings(metrics_port=9400).metrics_port == 9400
    for taken in ({"port": 8000, "metrics_port": 8000},
                  {"port": 8000, "metrics_port": 8001},  # direct: the proxy's
                  {"port": 8000, "proxy_port": 8100, "metrics_port": 8100}):
        with pytest.raises(ValueError, match="metrics_port"):
            IngressSettings(**taken)
    with pytest.raises(ValueError, match="metrics_port"):
        IngressSettings(metrics_port=-1)
    for name in ("gpu-cluster", "cpu-cluster"):  # several replicas behind the proxy
        profile = load_platform_config(ROOT / f"platform/profiles/{name}.yaml", root=ROOT)
        assert profile.profile.ingress.metrics_port == 0, name
    local = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    assert local.profile.ingress.metrics_port is None


def test_sluice_serve_port_override_is_validated(tmp_path) -> None:
    from sluice.cli import main

    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["ingress"]["proxy_port"] = 8100
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    profile["routing"] = str(ROOT / "platform/routing/routes.yaml")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    assert main(["serve", "--profile", str(tmp_path / "p.yaml"), "--port", "8100"]) == 2
