"""What runs on a node of a launched cluster before and around `ray start`.

cluster.yaml (and platform/clusters/onprem.yaml) start every node with
`eval "$(sluice cluster env --profile P)"`: the profile's Ray environment (Serve's switches,
which Serve reads when each of its processes starts) plus the node's secrets, read from the
cloud's own secret store with the node's IAM role (AWS SSM Parameter Store), never from a
file. The head also runs `eval "$(sluice cluster redis --profile P)"`: the shared Redis, unless
an external one is named, with a password from the secret store or one generated on the head.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sluice.deployments.ray_env import ray_environment
from sluice.deployments.serve_config import (
    ENV_HEAD_REDIS_PORT,
    ENV_REDIS_PASSWORD,
    ENV_REDIS_URL,
)
from sluice.schema.platform import Profile

# SSM parameter (under the prefix) -> environment variable of every Ray process on the node
SSM_SECRETS = {"redis-url": ENV_REDIS_URL, "redis-password": ENV_REDIS_PASSWORD,
               "hf-token": "HF_TOKEN"}


class ClusterNodeError(RuntimeError):
    pass


def exports(env: Mapping[str, str]) -> str:
    """`export K=V` lines a POSIX shell can eval (values quoted)."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))


def ssm_secrets(prefix: str, region: str, client: Any = None) -> dict[str, str]:
    """The node's secrets from AWS SSM Parameter Store (SecureStrings under `prefix`), read
    with the instance's IAM role. Missing parameters are skipped; the role needs
    ssm:GetParametersByPath on the prefix (and kms:Decrypt for a customer key)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
        aws_errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
    except ImportError:
        aws_errors = ()
    if client is None:
        try:
            import boto3
        except ImportError as exc:
            raise ClusterNodeError("--ssm-prefix needs boto3 (cluster.yaml installs it)") from exc
        client = boto3.client("ssm", region_name=region)
    prefix = "/" + prefix.strip("/")
    found: dict[str, str] = {}
    token: str | None = None
    while True:
        try:
            page = client.get_parameters_by_path(
                Path=prefix, WithDecryption=True, **({"NextToken": token} if token else {}))
        except aws_errors as exc:  # no role, no permission, no endpoint
            raise ClusterNodeError(f"no secrets from SSM {prefix}: {exc}") from exc
        for parameter in page.get("Parameters", []):
            name = parameter["Name"].rsplit("/", 1)[-1]
            if name in SSM_SECRETS:
                found[SSM_SECRETS[name]] = parameter["Value"]
        token = page.get("NextToken")
        if not token:
            return found


def node_environment(profile: Profile, node_secrets: Mapping[str, str]) -> dict[str, str]:
    """Everything `ray start` on a cluster node needs in its environment."""
    return {**ray_environment(profile, single_machine=False), **node_secrets}


class HeadRedis:
    """The head node's redis-server: a daemon that outlives this command (and `ray stop`,
    which does not kill Redis), with its data, config and password under run_dir."""

    def __init__(self, run_dir: Path, port: int, bind: str = "0.0.0.0") -> None:
        self.run_dir = run_dir
        self.port = port
        self.bind = bind

    @property
    def _host(self) -> str:
        return "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind

    @property
    def _pidfile(self) -> Path:
        return self.run_dir / "redis.pid"

    def password(self, given: str | None) -> str:
        """The given password, else the one generated on the first start (kept 0600)."""
        if given:
            return given
        stored = self.run_dir / "password"
        if stored.exists():
            return stored.read_text().strip()
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        generated = secrets.token_urlsafe(32)
        stored.touch(mode=0o600)
        stored.write_text(generated + "\n")
        return generated

    def answers(self, password: str) -> bool:
        import redis

        try:
            client = redis.Redis(host=self._host, port=self.port, password=password,
                                 socket_timeout=2, socket_connect_timeout=2)
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, password: str, timeout_s: float = 15.0) -> None:
        """Start it unless it already answers with this password (idempotent: `ray up`
        runs the head's start commands again on every restart)."""
        if self.answers(password):
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterNodeError("redis-server not found (cluster.yaml installs it on the "
                                   "head; or set SLUICE_REDIS_URL to an external Redis)")
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.run_dir / "redis.conf"
        conf.touch(mode=0o600)  # the password is in it, not on a command line
        conf.write_text("\n".join([
            f"port {self.port}", f"bind {self.bind}", "protected-mode yes",
            f"requirepass {password}", f"dir {self.run_dir}", "appendonly yes", 'save ""',
            "daemonize yes", f"pidfile {self._pidfile}",
            f"logfile {self.run_dir / 'redis.log'}", ""]))
        subprocess.run([binary, str(conf)], check=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self.answers(password):
            if time.monotonic() > deadline:
                raise ClusterNodeError(f"redis-server did not answer on {self._host}:"
                                       f"{self.port}; see {self.run_dir / 'redis.log'}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 10.0, kill: Callable[[int, int], None] | None = None,
             ) -> bool:
        """SIGTERM the server this run_dir started (its pidfile); False if none runs."""
        kill = kill or os.kill
        try:
            pid = int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return False
        try:
            kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        kill(pid, signal.SIGKILL)
        return True


def head_redis_exports(redis: HeadRedis, environ: Mapping[str, str]) -> str:
    """Start the head's Redis and return the environment that reaches it (for eval)."""
    password = redis.password(environ.get(ENV_REDIS_PASSWORD))
    redis.start(password)
    print(f"[sluice] the head's Redis answers on port {redis.port}", file=sys.stderr)
    return exports({ENV_REDIS_PASSWORD: password, ENV_HEAD_REDIS_PORT: str(redis.port)})
