"""`sluice cluster stop-workers`: `ray stop` on a local provider's workers before `ray down`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from sluice.deployments.cluster_launcher import stop_workers, worker_stop_commands

ROOT = Path(__file__).resolve().parents[2]


def _onprem() -> dict:
    return yaml.safe_load((ROOT / "platform/clusters/onprem.yaml").read_text())


def test_every_listed_worker_gets_ray_stop_in_a_login_shell_with_the_configs_key() -> None:
    config = _onprem()
    commands = worker_stop_commands(config)
    assert set(commands) == set(config["provider"]["worker_ips"])
    for ip, argv in commands.items():
        assert argv[0] == "ssh" and f"{config['auth']['ssh_user']}@{ip}" in argv
        key = argv[argv.index("-i") + 1]
        assert key == str(Path(config["auth"]["ssh_private_key"]).expanduser())
        assert "BatchMode=yes" in argv  # never waits for a password prompt
        assert argv[-1].startswith("bash --login") and "ray stop" in argv[-1]
    assert config["provider"]["head_ip"] not in commands  # `ray down` stops the head itself


def test_a_proxy_command_is_passed_on() -> None:
    config = _onprem()
    config["auth"]["ssh_proxy_command"] = "nc %h 2222"
    (argv, *_) = worker_stop_commands(config).values()
    assert "ProxyCommand=nc %h 2222" in argv


def test_a_cloud_config_has_no_workers_to_stop() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert worker_stop_commands(config) == {}
    assert stop_workers(config) == {}


def test_a_local_config_without_a_user_is_refused() -> None:
    config = _onprem()
    del config["auth"]["ssh_user"]
    with pytest.raises(ValueError, match="ssh_user"):
        worker_stop_commands(config)


def test_each_workers_outcome_is_reported() -> None:
    config = _onprem()
    first, second = config["provider"]["worker_ips"]
    calls: list[list[str]] = []

    def run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        if f"sluice@{second}" in argv:
            raise subprocess.TimeoutExpired(argv, timeout_s)
        return subprocess.CompletedProcess(argv, 0, "Stopped all 9 Ray processes.", "")

    results = stop_workers(config, timeout_s=5, run=run)
    assert results == {first: "ray stopped", second: "no answer within 5 s"}
    assert len(calls) == 2

    def refused(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 255, "", "Permission denied (publickey).")

    assert all(said.startswith("failed (255)") and "publickey" in said
               for said in stop_workers(config, run=refused).values())
