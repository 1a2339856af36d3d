"""`sluice build`: a Serve config Ray Serve's own schema accepts, whose args rebuild the same
application through the builder it names (without a cluster), and which changes exactly when
the platform files do."""

from __future__ import annotations

import importlib
import inspect
import io
import shutil
import types
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from sluice.cli import main
from sluice.deployments.serve_config import (
    ENV_HEAD_REDIS_PORT,
    ENV_REDIS_PASSWORD,
    ENV_REDIS_URL,
    build_args,
    load_config,
    resolve_redis_url,
)
from sluice.schema.loading import load_platform_config
from sluice.schema.serve_app import ServeAppArgs

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("local-cpu", "gpu-cluster", "cpu-cluster")


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may start Ray (see test_cluster_config)."""
    import ray._private.auto_init_hook as auto_init

    monkeypatch.setattr(auto_init, "enable_auto_connect", False)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(runtime_env={}))


def _build(*argv: str) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["build", *argv]) == 0
    return yaml.safe_load(out.getvalue())


def _app_args(document: dict[str, Any]) -> dict[str, Any]:
    (app,) = document["applications"]
    return dict(app["args"])


def _deployments(app: Any) -> dict[str, Any]:
    """Every deployment of a bound application, by name, with what Serve would run."""
    found: dict[str, Any] = {}

    def visit(node: Any) -> None:
        if hasattr(node, "_bound_deployment"):
            dep = node._bound_deployment
            found[dep.name] = (dep._deployment_config.model_dump(),
                               dep._replica_config.resource_dict,
                               dep._replica_config.placement_group_bundles)
            for arg in [*dep.init_args, *dep.init_kwargs.values()]:
                visit(arg)
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)

    visit(app)
    return found


@pytest.mark.parametrize("profile", PROFILES)
def test_the_output_is_a_serve_config_serve_accepts(profile: str) -> None:
    document = _build("--profile", f"platform/profiles/{profile}.yaml")
    schema = ServeDeploySchema.model_validate(document)  # Ray Serve's own validation
    (app,) = schema.applications
    assert app.name == "sluice" and app.route_prefix == "/"
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert len(inspect.signature(builder).parameters) == 1  # Serve's builder contract
    ServeAppArgs.model_validate(app.args)
    config = load_platform_config(ROOT / f"platform/profiles/{profile}.yaml", root=ROOT)
    assert schema.http_options.port == config.profile.ingress.serve_proxy_port
    assert schema.http_options.host == config.profile.ingress.host


@pytest.mark.parametrize("profile", PROFILES)
def test_its_args_rebuild_the_same_application(profile: str) -> None:
    from sluice.deployments.app import app_builder, build_app

    args = _app_args(_build("--profile", f"platform/profiles/{profile}.yaml"))
    redis = "redis://10.0.0.5:6380"
    rebuilt = app_builder({**args, "redis_url": redis})
    direct = build_app(load_platform_config(ROOT / f"platform/profiles/{profile}.yaml",
                                            root=ROOT), redis)
    assert type(rebuilt).__name__ == "Application"
    assert rebuilt._bound_deployment.init_args[0] == direct._bound_deployment.init_args[0]
    assert _deployments(rebuilt) == _deployments(direct)
    assert set(_deployments(rebuilt)) == {"SluiceIngress", "SluiceLLMServer:small",
                                          "SluiceLLMServer:large"}


def test_rollout_settings_name_the_deployments_the_builder_makes() -> None:
    """The GPU profile's surge goes into the config as per-deployment overrides; Serve
    refuses an override naming a deployment the app does not have."""
    from sluice.deployments.app import app_builder

    document = _build("--profile", "platform/profiles/gpu-cluster.yaml")
    (app,) = document["applications"]
    overrides = {d["name"]: d for d in app["deployments"]}
    built = _deployments(app_builder({**app["args"], "redis_url": "redis://h:6380"}))
    assert set(overrides) == set(built)
    assert {d["max_surge_percent"] for d in overrides.values()} == {25}
    assert "deployments" not in _build("--profile", "platform/profiles/local-cpu.yaml")[
        "applications"][0]  # 0: Serve's default


def test_cluster_paths_are_relative_to_the_cluster_root() -> None:
    args = _app_args(_build("--profile", "platform/profiles/gpu-cluster.yaml",
                            "--cluster-root", "/home/ray/sluice"))
    assert args["root"] == "/home/ray/sluice"
    assert args["profile"] == "platform/profiles/gpu-cluster.yaml"
    assert args["fingerprint"].startswith("sha256:")
    assert "redis_url" not in args  # found on the cluster, not written into the config


def _copy_platform(tmp: Path) -> Path:
    shutil.copytree(ROOT / "platform", tmp / "platform")
    return tmp


def test_the_config_changes_exactly_when_the_platform_files_do(tmp_path: Path) -> None:
    """Serve redeploys on a changed config and ignores an identical one: so an unchanged
    platform must build to the same config, and an edited catalog to a different one."""
    root = _copy_platform(tmp_path)
    profile = root / "platform/profiles/gpu-cluster.yaml"
    first, _ = build_args(profile, root=root, cluster_root="/c")
    assert build_args(profile, root=root, cluster_root="/c")[0] == first
    catalog = root / "platform/catalog.yaml"
    catalog.write_text(catalog.read_text().replace("context_length: 2048",
                                                   "context_length: 4096"))
    changed, _ = build_args(profile, root=root, cluster_root="/c")
    assert changed.fingerprint != first.fingerprint


def test_the_builder_refuses_files_that_are_not_the_ones_built_from(tmp_path: Path) -> None:
    root = _copy_platform(tmp_path)
    args, _ = build_args(root / "platform/profiles/local-cpu.yaml", root=root)
    load_config(args)
    routes = root / "platform/routing/routes.yaml"
    routes.write_text(routes.read_text() + "\n# edited on the cluster\n")
    with pytest.raises(ValueError, match="not the ones this Serve config was built from"):
        load_config(args)


def test_routes_can_be_given_instead_of_the_profiles(tmp_path: Path) -> None:
    root = _copy_platform(tmp_path)
    routes = root / "platform/routing/other.yaml"
    routes.write_text((root / "platform/routing/routes.yaml").read_text())
    args = _app_args(_build("--profile", str(root / "platform/profiles/local-cpu.yaml"),
                            "--routes", str(routes)))
    assert args["routes"] == "platform/routing/other.yaml"
    config = load_config(ServeAppArgs.model_validate(args))
    assert config.routing is not None
    routes.write_text("routes:\n  - {name: bad, small: nope, large: large}\n")
    with pytest.raises(ValueError):
        build_args(root / "platform/profiles/local-cpu.yaml", root=root, routes=routes)


def test_a_file_outside_the_root_cannot_go_to_a_cluster(tmp_path: Path) -> None:
    root = _copy_platform(tmp_path / "a")
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text((root / "platform/routing/routes.yaml").read_text())
    with pytest.raises(ValueError, match="not under"):
        build_args(root / "platform/profiles/local-cpu.yaml", root=root, routes=outside,
                   cluster_root="/home/ray/sluice")


def test_no_password_goes_into_a_serve_config() -> None:
    for url in ("redis://:s3cret@head:6380", "redis://user:s3cret@head:6380/0",
                "redis-sentinel://u:s3cret@h1:26379,h2:26379/mymaster"):
        with pytest.raises(ValueError, match="readable by `serve config`"):
            ServeAppArgs(root="/r", profile="p.yaml", redis_url=url)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["build", "--redis-url", "redis://:pw@head:6380"]) == 2
    assert out.getvalue() == ""


def test_where_the_replicas_find_redis() -> None:
    args = ServeAppArgs(root="/r", profile="p.yaml")
    profile = load_platform_config(ROOT / "platform/profiles/gpu-cluster.yaml",
                                   root=ROOT).profile
    no_head = lambda: None
    head = lambda: "10.0.3.7"
    explicit = args.model_copy(update={"redis_url": "redis://cache.internal:6379"})
    assert resolve_redis_url(explicit, profile, {ENV_REDIS_URL: "redis://x:1"}, head) \
        == "redis://cache.internal:6379"
    assert resolve_redis_url(args, profile, {ENV_REDIS_URL: "rediss://:p@x:6380"}, head) \
        == "rediss://:p@x:6380"
    # the head's Redis, by the head's address as the cluster knows it, never 127.0.0.1
    assert resolve_redis_url(args, profile, {}, head) == "redis://10.0.3.7:6380"
    env = {ENV_REDIS_PASSWORD: "a b/c@d", ENV_HEAD_REDIS_PORT: "6401"}
    assert resolve_redis_url(args, profile, env, head) == "redis://:a%20b%2Fc%40d@10.0.3.7:6401"
    with pytest.raises(ValueError, match="no Redis"):
        resolve_redis_url(args, profile, {}, no_head)
    with_url = profile.model_copy(update={"redis_url": "redis://profile:6379"})
    assert resolve_redis_url(args, with_url, {}, head) == "redis://profile:6379"


def test_the_head_is_found_through_ray_only_when_connected(monkeypatch) -> None:
    from sluice.deployments.serve_config import head_host

    # (not connected: in `make test` an earlier live test may have left this process
    # connected to a Ray cluster, so the state is set rather than assumed)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert head_host() is None
