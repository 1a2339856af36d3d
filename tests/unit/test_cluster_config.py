"""The cluster launcher configs: Ray's own validation, agreement with the GPU profile, what
Ray's autoscaler would launch for Serve's replica demand, and no secret in the files.

What cannot run here (no cloud account, no GPU): `ray up` itself. What runs instead is the
launcher's own offline path (`prepare_config`, then `validate_config` against
ray-schema.json, as `ray up` does before it calls the cloud) and the autoscaler's own
bin-packing (`get_nodes_for`) on the placement bundles the GPU profile's deployments ask for.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import types
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeAvailabilitySummary,
)
from ray.autoscaler._private.resource_demand_scheduler import (
    _default_utilization_scorer,
    get_bin_pack_residual,
    get_nodes_for,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from sluice.cli import build_parser
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = [ROOT / "cluster.yaml", ROOT / "platform/clusters/onprem.yaml"]
AWS = ROOT / "cluster.yaml"
GPU_PROFILE = ROOT / "platform/profiles/gpu-cluster.yaml"
# where cluster.yaml / onprem.yaml put the repository's files on a node
REMOTE_ROOTS = ("/home/ray/sluice/", "~/sluice/")


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may start Ray: Ray's auto-init is off, and the one thing Ray Serve LLM's
    deployment builder asks a running Ray for (the caller's runtime env) is stubbed."""
    import ray._private.auto_init_hook as auto_init

    monkeypatch.setattr(auto_init, "enable_auto_connect", False)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(runtime_env={}))


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _commands(config: dict[str, Any]) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key, [])]


def _sluice_invocations(command: str) -> list[list[str]]:
    """Each `sluice ...` argv in a shell command, including those inside "$( ... )"."""
    found = []
    for inner in re.findall(r'\$\(([^()]*)\)', command) + [command]:
        words = shlex.split(inner.replace("$(", " ").replace(")", " "))
        for i, word in enumerate(words):
            if word == "sluice" or word.endswith("/bin/sluice"):
                argv = []
                for arg in words[i + 1:]:
                    if arg in ("&&", "||", ";", "|") or arg.startswith("eval"):
                        break
                    argv.append(arg)
                found.append(argv)
    unique = {tuple(a) for a in found}
    return [list(a) for a in sorted(unique)]


def _repo_path(remote: str) -> Path:
    for prefix in REMOTE_ROOTS:
        if remote.startswith(prefix):
            return ROOT / remote[len(prefix):]
    raise AssertionError(f"{remote} is not under the node's copy of the repository")


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_own_validation(path: Path) -> None:
    prepared = prepare_config(copy.deepcopy(_raw(path)))  # what `ray up` does first
    validate_config(prepared)  # ray-schema.json plus the launcher's own checks
    head = prepared["head_node_type"]
    assert head in prepared["available_node_types"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_every_sluice_command_and_profile_in_it_is_real(path: Path) -> None:
    """Each `sluice ...` the nodes run parses with the real CLI (a misspelled flag fails
    here, not on a GPU node), and every profile they name validates with its catalog."""
    invocations = [argv for cmd in _commands(_raw(path)) for argv in _sluice_invocations(cmd)]
    assert {argv[0] for argv in invocations} >= {"cluster", "deploy"}
    profiles = set()
    for argv in invocations:
        args = build_parser().parse_args(argv)
        if getattr(args, "profile", None):
            profiles.add(args.profile)
    assert profiles
    for remote in profiles:
        local = _repo_path(remote)
        config = load_platform_config(local, root=ROOT)
        assert config.profile.device == "cuda"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_nodes_start_ray_with_the_profiles_environment(path: Path) -> None:
    raw = _raw(path)
    head, workers = raw["head_start_ray_commands"], raw["worker_start_ray_commands"]
    for commands in (head, workers):
        starts = [c for c in commands if "ray start" in c]
        assert len(starts) == 1
        start = starts[0]
        # Serve reads RAY_SERVE_* (and the header guard) when its processes start
        assert start.index('eval "$(sluice cluster env') < start.index("ray start")
    head_start = next(c for c in head if "ray start --head" in c)
    assert head_start.index("sluice cluster redis") < head_start.index("ray start")
    assert "--dashboard-host=0.0.0.0" in head_start  # Serve's REST API for `sluice deploy`
    assert head.index(head_start) < next(i for i, c in enumerate(head) if "sluice deploy" in c)


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_file_mounts_carry_the_platform_and_one_commit(path: Path) -> None:
    mounts = _raw(path)["file_mounts"]
    local = {Path(v).as_posix() for v in mounts.values()}  # Path drops the leading ./
    assert local == {"platform", "models/demo", ".run/cluster"}
    for remote in mounts:
        _repo_path(remote + "/")
    setup = " ".join(_raw(path)["setup_commands"])
    assert "sluice.tar.gz[gpu]" in setup and "--force-reinstall" in setup


def test_the_image_is_the_pinned_ray() -> None:
    image = _raw(AWS)["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-cu(\d+)", image)
    assert match, image
    assert match.group(1) == ray.__version__  # the Ray that pyproject pins
    assert match.group(2) == "311"


def _gpu_deployments() -> dict[str, Any]:
    """The GPU profile's LLM deployments as Sluice builds them, without a cluster."""
    from sluice.deployments.llm_server import build_llm_deployments

    config = load_platform_config(GPU_PROFILE, root=ROOT)
    return build_llm_deployments(config, "redis://head:6380")


def test_cluster_yaml_and_the_gpu_profile_agree() -> None:
    cluster = _raw(AWS)
    types_ = cluster["available_node_types"]
    head = types_[cluster["head_node_type"]]
    profile = load_platform_config(GPU_PROFILE, root=ROOT).profile
    assert head["resources"].get("GPU", 0) == 0
    for name, amount in profile.ingress.resources.items():
        assert head["resources"].get(name, 0) >= amount * profile.ingress.num_replicas
        assert all(name not in t["resources"] for k, t in types_.items() if k != "head")
    total = 0
    for model, deployment in profile.models.items():
        key = f"accelerator_type:{deployment.accelerator_type}"
        matching = [k for k, t in types_.items() if key in t["resources"]]
        assert len(matching) == 1, (model, key, matching)
        node = types_[matching[0]]
        per_node = int(node["resources"]["GPU"] // profile.placement_bundles[0]["GPU"])
        assert per_node >= 1
        # a rollout may start this many more replicas than the target (Serve rounds up)
        surge = -(-profile.max_surge_percent * deployment.max_replicas // 100)
        assert node["max_workers"] * per_node >= deployment.max_replicas + surge, model
        assert node.get("min_workers", 0) <= deployment.min_replicas
        total += node["max_workers"]
    assert cluster["max_workers"] >= total


def test_rays_autoscaler_launches_the_right_nodes_for_serves_replica_demand() -> None:
    """The placement bundles Serve asks for at each model's max_replicas make Ray's own
    bin-packing pick that model's GPU node type, as many as needed, with nothing left
    unplaced; a rollout's surge replicas fit too, and nothing beyond them (max_workers)."""
    cluster = prepare_config(copy.deepcopy(_raw(AWS)))
    node_types, head = cluster["available_node_types"], cluster["head_node_type"]
    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary({}))
    profile = load_platform_config(GPU_PROFILE, root=ROOT).profile
    for model, app in _gpu_deployments().items():
        bundles = app._bound_deployment._replica_config.placement_group_bundles
        assert len(bundles) == 1
        limit = profile.models[model].max_replicas
        surge = -(-profile.max_surge_percent * limit // 100)
        accelerator = profile.models[model].accelerator_type
        expected = next(k for k, t in node_types.items()
                        if f"accelerator_type:{accelerator}" in t["resources"])
        demand = [dict(bundles[0]) for _ in range(limit)]
        to_add, left = get_nodes_for(node_types, {}, head, cluster["max_workers"], demand,
                                     scorer)
        assert dict(to_add) == {expected: limit} and left == []
        extra = demand[:surge]
        to_add, left = get_nodes_for(node_types, {expected: limit}, head,
                                     cluster["max_workers"], extra, scorer)
        assert dict(to_add) == {expected: surge} and left == []
        _, beyond = get_nodes_for(node_types, {expected: limit + surge}, head,
                                  cluster["max_workers"], demand[:1], scorer)
        assert beyond == demand[:1]


def test_the_ingress_replicas_fit_on_the_head_only() -> None:
    from sluice.deployments.app import build_app

    cluster = _raw(AWS)
    config = load_platform_config(GPU_PROFILE, root=ROOT)
    ingress = build_app(config, "redis://head:6380")._bound_deployment
    need = dict(ingress._replica_config.resource_dict)
    replicas = [need] * config.profile.ingress.num_replicas
    for name, node in cluster["available_node_types"].items():
        left, _ = get_bin_pack_residual([dict(node["resources"])], replicas)
        assert (left == []) == (name == cluster["head_node_type"]), name


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i)aws_secret_access_key|aws_session_token|\b[A-Za-z0-9/+]{40}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "password in a URL": r"://[^/\s:@]*:[^@\s/]+@",
    "Redis password": r"(?i)requirepass\s+\S|redis_password\s*[:=]\s*\S",
    "API key": r"\bsk-[A-Za-z0-9_-]{8,}|\bhf_[A-Za-z0-9]{20,}",
    "credentials block": r"(?im)^\s*(aws_credentials|password|secret|token)\s*:",
}


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_no_secret_in_the_launcher_config(path: Path) -> None:
    text = path.read_text()
    for what, pattern in SECRET_PATTERNS.items():
        assert not re.search(pattern, text), f"{path.name}: looks like a {what}"
    raw = _raw(path)
    assert "aws_credentials" not in raw["provider"]
    key = raw["auth"].get("ssh_private_key")
    assert key is None or "\n" not in key and key.startswith(("~/", "/"))  # a path, not a key


def test_the_on_prem_config_uses_placeholder_hosts_only() -> None:
    provider = _raw(ROOT / "platform/clusters/onprem.yaml")["provider"]
    assert provider["type"] == "local"
    for ip in [provider["head_ip"], *provider["worker_ips"]]:
        assert ip.startswith("192.0.2."), ip  # TEST-NET-1 (RFC 5737): never a real host
