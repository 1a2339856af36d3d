"""What `make cluster-down` runs on the launcher's machine before `ray down`.

`ray down` stops Ray on the head only (`ray stop` there) and then asks the node provider to
terminate the nodes. A cloud provider terminates the workers' machines; Ray's `local`
provider (platform/clusters/onprem.yaml) only marks them terminated in its state file, so
each worker's Ray outlives the cluster until its raylet notices the head is gone, and the
engine processes of its replicas, orphaned then, outlive even that (seen in
tests/integration/test_multihost_live.py: `VLLM::EngineCore` left on both workers). This runs
`ray stop` on every listed worker first, over SSH with the config's own auth, as the
launcher itself would reach them.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


def worker_stop_commands(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """worker address -> the ssh command that runs `ray stop` there; empty unless the
    config's provider is `local` (a cloud terminates its workers itself)."""
    provider = config.get("provider") or {}
    if provider.get("type") != "local":
        return {}
    auth = config.get("auth") or {}
    user = auth.get("ssh_user")
    if not user:
        raise ValueError("auth.ssh_user is required")
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=20", "-o", "BatchMode=yes"]
    if auth.get("ssh_private_key"):
        options += ["-i", str(Path(auth["ssh_private_key"]).expanduser())]
    if auth.get("ssh_proxy_command"):
        options += ["-o", f"ProxyCommand={auth['ssh_proxy_command']}"]
    # a login shell, as the launcher's own commands run: ~/.bashrc puts `ray` on PATH
    remote = "bash --login -c -i " + shlex.quote("source ~/.bashrc; ray stop")
    return {ip: ["ssh", *options, f"{user}@{ip}", remote]
            for ip in provider.get("worker_ips") or []}


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                          check=False, stdin=subprocess.DEVNULL)


def stop_workers(config: Mapping[str, Any], timeout_s: float = 120.0,
                 run: Runner = _run) -> dict[str, str]:
    """`ray stop` on every worker at once; address -> what happened (for the operator)."""
    commands = worker_stop_commands(config)

    def one(item: tuple[str, list[str]]) -> tuple[str, str]:
        ip, argv = item
        try:
            done = run(argv, timeout_s)
        except subprocess.TimeoutExpired:
            return ip, f"no answer within {timeout_s:.0f} s"
        if done.returncode != 0:
            return ip, f"failed ({done.returncode}): {(done.stderr or done.stdout)[-300:]}"
        return ip, "ray stopped"

    with ThreadPoolExecutor(max(1, min(16, len(commands)))) as pool:
        return dict(pool.map(one, commands.items()))
