"""Deploy the platform onto a running Ray cluster, and report how it stands.

`sluice deploy` applies the Serve config `sluice build` writes through Serve's REST API on
the cluster's dashboard (`PUT /api/serve/applications/`), exactly as `serve deploy` does: the
deployment is declarative, recorded by Serve (`serve config` shows it), and a changed catalog,
profile or routes file is a config update that Serve rolls out replica by replica without
restarting Ray. `sluice status` is Serve's application and deployment status plus the
ingress's own /readyz.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from sluice.deployments.serve_config import APP_NAME


class DeployError(RuntimeError):
    pass


def dashboard_address(explicit: str | None = None) -> str:
    """The dashboard's HTTP address: given, $RAY_DASHBOARD_ADDRESS, or the one the cluster at
    $RAY_ADDRESS (default: the cluster this node belongs to, `address="auto"`) reports."""
    if explicit:
        return explicit
    if os.environ.get("RAY_DASHBOARD_ADDRESS"):
        return os.environ["RAY_DASHBOARD_ADDRESS"]
    import ray

    context = ray.init(address=os.environ.get("RAY_ADDRESS", "auto"),
                       logging_level=logging.WARNING, log_to_driver=False)
    try:
        url = context.dashboard_url
    finally:
        ray.shutdown()  # a driver that leaves: the cluster keeps running
    if not url:
        raise DeployError("the cluster runs no dashboard, which Serve's REST API needs "
                          "(start the head with --include-dashboard=true)")
    host, _, port = url.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def serve_client(address: str, timeout_s: float = 60.0) -> Any:
    """Serve's own REST client (what `serve deploy` uses), once the dashboard answers (right
    after `ray start` it may still be starting)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ServeSubmissionClient(address)
        except (OSError, RuntimeError) as exc:  # requests' errors are OSErrors
            if time.monotonic() > deadline:
                raise DeployError(f"no Ray dashboard at {address}: {exc}") from None
            time.sleep(2)


def deploy(config: dict[str, Any], client: Any, *, wait_s: float = 0,
           progress: Callable[[str], None] | None = None) -> None:
    """Hand the config to Serve; with wait_s, wait (bounded) until this version runs."""
    client.deploy_applications(config)
    if wait_s > 0:
        wait_running(client, config, wait_s, progress or _stderr)


def _this_version(app: dict[str, Any], config: dict[str, Any]) -> bool:
    wanted = next(a for a in config["applications"] if a["name"] == APP_NAME)
    deployed = app.get("deployed_app_config") or {}
    return bool(deployed.get("args") == wanted["args"])


def wait_running(client: Any, config: dict[str, Any], wait_s: float,
                 progress: Callable[[str], None]) -> None:
    deadline = time.monotonic() + wait_s
    last = ""
    while True:
        app = client.get_serve_details().get("applications", {}).get(APP_NAME)
        status = app["status"] if app else "NOT_STARTED"
        if app and _this_version(app, config):
            if status == "RUNNING":
                return
            if status == "DEPLOY_FAILED":
                raise DeployError(f"Serve could not deploy {APP_NAME}: {app['message']}")
        if status != last:
            progress(f"{APP_NAME}: {status}")
            last = status
        if time.monotonic() > deadline:
            raise DeployError(f"{APP_NAME} not RUNNING after {wait_s:.0f} s: {status} "
                              f"{app['message'] if app else ''}")
        time.sleep(2)


def status_lines(details: dict[str, Any]) -> tuple[list[str], bool]:
    """Serve's status of every application, deployment and replica; whether all run."""
    lines, healthy = [], True
    apps = details.get("applications", {})
    if not apps:
        return ["no Serve application is deployed"], False
    for name, app in sorted(apps.items()):
        healthy &= app["status"] == "RUNNING"
        lines.append(f"application {name}: {app['status']} {app.get('message', '')}".rstrip())
        for dname, dep in sorted(app.get("deployments", {}).items()):
            states: dict[str, int] = {}
            for replica in dep.get("replicas", []):
                key = f"{replica['state']}@{replica.get('node_ip') or '?'}"
                states[key] = states.get(key, 0) + 1
            replicas = ", ".join(f"{n} {k}" for k, n in sorted(states.items())) or "none"
            healthy &= dep["status"] in ("HEALTHY", "UPSCALING", "DOWNSCALING")
            lines.append(f"  {dname}: {dep['status']}, {dep.get('target_num_replicas', '?')} "
                         f"target, replicas: {replicas}")
            if dep.get("message"):
                lines.append(f"    {dep['message'][:300]}")
    return lines, healthy


def readyz_lines(url: str, timeout_s: float = 10.0) -> tuple[list[str], bool]:
    """Sluice's own readiness: every model answered, and the caches' state."""
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/readyz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return [f"{url}/readyz: no answer ({exc!r})"], False
    return [f"{url}/readyz: {response.status_code} {response.text[:500]}"], \
        response.status_code == 200


def _stderr(message: str) -> None:
    print(f"[sluice] {message}", file=sys.stderr, flush=True)
