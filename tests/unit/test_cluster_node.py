"""What a cluster node runs before `ray start`: the environment it evals (the profile's Ray
switches and its secrets), the secrets read from SSM, and the head's own Redis (a real
redis-server on a free port: its password never on a command line, restart-safe)."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import redis

from sluice.cli import main
from sluice.deployments.cluster_node import (
    ClusterNodeError,
    HeadRedis,
    exports,
    head_redis_exports,
    node_environment,
    ssm_secrets,
)
from sluice.deployments.local_stack import LocalStack
from sluice.deployments.ray_env import HEADER_GUARD, ray_environment
from sluice.schema.loading import load_platform_config
from sluice.schema.platform import Profile

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GPU = ROOT / "platform/profiles/gpu-cluster.yaml"
CPU = ROOT / "platform/profiles/local-cpu.yaml"


def _profile(path: Path) -> Profile:
    return load_platform_config(path, root=ROOT).profile


def test_exports_survive_a_real_shell() -> None:
    env = {"A": "plain", "B": "with space", "C": "it's \"quoted\" $HOME `x`", "D": ""}
    shown = subprocess.run(["bash", "-c", 'eval "$X"; printf "%s\\n" "$A" "$B" "$C" "$D"'],
                           env={"X": exports(env), "PATH": os.environ["PATH"]},
                           capture_output=True, text=True, check=True).stdout
    assert shown.split("\n")[:4] == ["plain", "with space", env["C"], ""]


def test_a_cluster_node_gets_serves_switches_and_no_single_machine_shortcut() -> None:
    env = node_environment(_profile(GPU), {"HF_TOKEN": "t"})
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == HEADER_GUARD
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"  # the GPU profile: Serve's proxy
    assert env["PYTHONHASHSEED"] == "0"  # the same KV-tier chunk keys on every node
    assert env["HF_TOKEN"] == "t"
    # behind a load balancer a stopping replica keeps Serve's drain period
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in env


def test_no_process_of_the_platform_reports_usage_unless_a_profile_says_so() -> None:
    for single_machine in (True, False):
        env = ray_environment(_profile(GPU), single_machine=single_machine)
        # the switches each package reads (vllm/envs.py, lmcache's usage_telemetry, Ray)
        assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
        assert env["LMCACHE_TRACK_USAGE"] == "false"
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    profile = _profile(GPU).model_copy(update={"engine_env": {"DO_NOT_TRACK": "0"}})
    assert ray_environment(profile, single_machine=False)["DO_NOT_TRACK"] == "0"


def test_sluice_serve_keeps_its_environment() -> None:
    config = load_platform_config(CPU, root=ROOT)
    env = LocalStack(config, ROOT / ".run").ray_environment()
    assert env == ray_environment(config.profile, single_machine=True)
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1"
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "8000"


def test_the_cli_prints_what_ray_start_needs() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["cluster", "env", "--profile", str(GPU)]) == 0
    assert "export RAY_SERVE_THROUGHPUT_OPTIMIZED=1\n" in out.getvalue()


class FakeSSM:
    def __init__(self, pages: list[dict], error: Exception | None = None) -> None:
        self.pages, self.error, self.calls = pages, error, []

    def get_parameters_by_path(self, **kwargs: object) -> dict:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.pages[len(self.calls) - 1]


def test_secrets_come_from_ssm_under_the_prefix() -> None:
    client = FakeSSM([
        {"Parameters": [{"Name": "/sluice/c/redis-password", "Value": "pw"},
                        {"Name": "/sluice/c/unrelated", "Value": "x"}], "NextToken": "t1"},
        {"Parameters": [{"Name": "/sluice/c/hf-token", "Value": "hf"}]}])
    assert ssm_secrets("sluice/c/", "us-west-2", client) == {
        "SLUICE_REDIS_PASSWORD": "pw", "HF_TOKEN": "hf"}
    assert client.calls[0] == {"Path": "/sluice/c", "WithDecryption": True}
    assert client.calls[1]["NextToken"] == "t1"


def test_an_ssm_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No role or no permission: botocore's errors become one error the node reports (the
    node still starts: `sluice cluster env` prints the environment without the secrets)."""
    fake = types.ModuleType("botocore.exceptions")

    class BotoCoreError(Exception):
        pass

    class ClientError(Exception):
        pass

    fake.BotoCoreError, fake.ClientError = BotoCoreError, ClientError
    monkeypatch.setitem(sys.modules, "botocore", types.ModuleType("botocore"))
    monkeypatch.setitem(sys.modules, "botocore.exceptions", fake)
    with pytest.raises(ClusterNodeError, match="AccessDenied"):
        ssm_secrets("/sluice/c", "us-west-2", FakeSSM([], ClientError("AccessDenied")))


@pytest.fixture
def head_redis(tmp_path: Path) -> Iterator[HeadRedis]:
    server = HeadRedis(tmp_path / "redis", free_port(), bind="127.0.0.1")
    yield server
    server.stop()


def test_the_heads_redis_starts_once_with_a_password_kept_private(head_redis: HeadRedis,
                                                                  ) -> None:
    text = head_redis_exports(head_redis, {})
    env = dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines())
    password = env["SLUICE_REDIS_PASSWORD"]
    assert env["SLUICE_HEAD_REDIS_PORT"] == str(head_redis.port)
    assert len(password) >= 32
    for name in ("password", "redis.conf"):
        mode = stat.S_IMODE((head_redis.run_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    pid = int((head_redis.run_dir / "redis.pid").read_text())
    assert password not in Path(f"/proc/{pid}/cmdline").read_text()
    client = redis.Redis(port=head_redis.port, password=password)
    assert client.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=head_redis.port).ping()
    # `ray up` runs the head's start commands again: the same server, the same password
    assert head_redis_exports(head_redis, {}) == text
    assert int((head_redis.run_dir / "redis.pid").read_text()) == pid
    assert head_redis.stop() is True
    assert not head_redis.answers(password)


def test_a_given_password_is_used_and_not_stored(head_redis: HeadRedis) -> None:
    head_redis_exports(head_redis, {"SLUICE_REDIS_PASSWORD": "from-ssm-1234"})
    assert redis.Redis(port=head_redis.port, password="from-ssm-1234").ping()
    assert not (head_redis.run_dir / "password").exists()


def test_no_head_redis_when_an_external_one_is_named(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://cache.internal:6379")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["cluster", "redis", "--profile", str(GPU), "--dir", str(tmp_path),
                     "--port", str(free_port())]) == 0
    assert out.getvalue() == ""
    assert not (tmp_path / "redis.conf").exists()
