"""`sluice build | deploy | status | cluster ...`: the platform on a Ray cluster.

- `sluice build --profile P > serve-config.yaml`: a standard Ray Serve config file
  (`serve deploy serve-config.yaml` deploys it; `serve status` reports it).
- `sluice deploy --profile P`: the same config applied to the running cluster (Serve's REST
  API, as `serve deploy`): a changed catalog or routes file rolls out as a config update.
- `sluice status`: Serve's application/deployment status plus the ingress's /readyz.
- `sluice cluster env` / `sluice cluster redis`: what a node runs before `ray start`
  (cluster.yaml, platform/clusters/onprem.yaml).
- `sluice cluster stop-workers --config C`: Ray stopped on a `local` provider's workers,
  before `ray down` (which stops the head only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = REPO_ROOT / "platform" / "profiles" / "local-cpu.yaml"
DEFAULT_REDIS_DIR = "~/.sluice/redis"


def _root_of(profile: Path) -> Path:
    """The directory that holds the profile's platform/ folder (relative model sources and
    the Serve config's paths start there); the repository's root otherwise."""
    for parent in profile.resolve().parents:
        if parent.name == "platform":
            return parent.parent
    return REPO_ROOT


def _serve_config(args: argparse.Namespace) -> dict[str, Any]:
    from ray.serve.schema import ServeDeploySchema

    from sluice.deployments.serve_config import build_args, serve_config

    profile = Path(args.profile).expanduser()
    spec, config = build_args(
        profile, root=Path(args.root) if args.root else _root_of(profile),
        routes=Path(args.routes) if args.routes else None,
        cluster_root=args.cluster_root or None, redis_url=args.redis_url or None)
    document = serve_config(spec, config)
    ServeDeploySchema.model_validate(document)  # Serve's own schema, before anyone deploys it
    return document


def _header(args: argparse.Namespace) -> str:
    return (f"# Ray Serve config of Sluice, written by `sluice build --profile {args.profile}`.\n"
            "# Deploy: `serve deploy serve-config.yaml` (or `sluice deploy`), onto a cluster\n"
            "# whose nodes ran `eval \"$(sluice cluster env --profile PROFILE)\"` before `ray start`:\n"
            "# Serve reads its RAY_SERVE_* switches when its processes start, not from here.\n")


def _cmd_build(args: argparse.Namespace) -> int:
    import yaml

    try:
        document = _serve_config(args)
    except (OSError, ValueError) as exc:
        print(f"sluice build: {exc}", file=sys.stderr)
        return 2
    text = _header(args) + yaml.safe_dump(document, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from sluice.deployments.cluster_deploy import (
        DeployError,
        dashboard_address,
        deploy,
        serve_client,
    )

    try:
        document = _serve_config(args)
        address = dashboard_address(args.address or None)
        deploy(document, serve_client(address), wait_s=args.wait)
    except (OSError, ValueError, DeployError) as exc:
        print(f"sluice deploy: {exc}", file=sys.stderr)
        return 1
    done = "running" if args.wait else "sent (`sluice status` follows it)"
    print(f"[sluice] deployed to {address}: {done}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from sluice.deployments.cluster_deploy import (
        DeployError,
        dashboard_address,
        readyz_lines,
        serve_client,
        status_lines,
    )

    try:
        client = serve_client(dashboard_address(args.address or None), timeout_s=10)
        lines, serving = status_lines(client.get_serve_details())
    except (OSError, RuntimeError, DeployError) as exc:
        print(f"sluice status: {exc}", file=sys.stderr)
        return 1
    url = args.url
    if not url:
        from sluice.schema.loading import load_yaml
        from sluice.schema.platform import Profile

        ingress = Profile.model_validate(load_yaml(Path(args.profile))).ingress
        host = "127.0.0.1" if ingress.host in ("0.0.0.0", "::") else ingress.host
        url = f"http://{host}:{ingress.port}"
    ready, is_ready = readyz_lines(url)
    print("\n".join(lines + ready))
    return 0 if serving and is_ready else 1


def _cmd_cluster_env(args: argparse.Namespace) -> int:
    from sluice.deployments.cluster_node import (
        ClusterNodeError,
        exports,
        node_environment,
        ssm_secrets,
    )
    from sluice.schema.loading import load_yaml
    from sluice.schema.platform import Profile

    profile = Profile.model_validate(load_yaml(Path(args.profile).expanduser()))
    secrets: dict[str, str] = {}
    if args.ssm_prefix:
        try:
            secrets = ssm_secrets(args.ssm_prefix, args.aws_region)
        except ClusterNodeError as exc:
            # no role, no permission, no network: the node still starts, and says why
            print(f"[sluice] {exc}", file=sys.stderr)
        print(f"[sluice] secrets from SSM {args.ssm_prefix}: "
              f"{', '.join(sorted(secrets)) or 'none'}", file=sys.stderr)
    sys.stdout.write(exports(node_environment(profile, secrets)))
    return 0


def _cmd_cluster_redis(args: argparse.Namespace) -> int:
    from sluice.deployments.cluster_node import ClusterNodeError, HeadRedis, head_redis_exports
    from sluice.deployments.serve_config import ENV_REDIS_URL
    from sluice.schema.loading import load_yaml
    from sluice.schema.platform import Profile

    redis = HeadRedis(Path(args.dir).expanduser(), args.port, args.bind)
    if args.stop:
        print(f"[sluice] head Redis {'stopped' if redis.stop() else 'was not running'}",
              file=sys.stderr)
        return 0
    profile = Profile.model_validate(load_yaml(Path(args.profile).expanduser()))
    if os.environ.get(ENV_REDIS_URL) or profile.redis_url:
        print("[sluice] an external Redis is named (SLUICE_REDIS_URL or the profile's "
              "redis_url): the head runs none", file=sys.stderr)
        return 0
    try:
        sys.stdout.write(head_redis_exports(redis, os.environ))
    except (OSError, ClusterNodeError) as exc:
        print(f"sluice cluster redis: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_cluster_stop_workers(args: argparse.Namespace) -> int:
    import yaml

    from sluice.deployments.cluster_launcher import stop_workers

    config = yaml.safe_load(Path(args.config).read_text())
    results = stop_workers(config, timeout_s=args.timeout)
    if not results:
        print("[sluice] not a `local` provider: `ray down` terminates the workers",
              file=sys.stderr)
    for ip, said in results.items():
        print(f"[sluice] worker {ip}: {said}", file=sys.stderr)
    return 0 if all(said == "ray stopped" for said in results.values()) else 1


def _config_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--profile", default=str(DEFAULT_PROFILE))
    cmd.add_argument("--routes", default="", help="routing YAML instead of the profile's")
    cmd.add_argument("--root", default="", help="directory holding platform/ here (default: "
                     "the one above the profile's platform/ folder)")
    cmd.add_argument("--cluster-root", default="", help="where that directory is on the "
                     "cluster (default: the same path), e.g. /home/ray/sluice")
    cmd.add_argument("--redis-url", default="", help="the shared Redis, no password (default: "
                     "$SLUICE_REDIS_URL where Serve builds the app, the profile's, or the "
                     "head's Redis)")


def add_commands(sub: Any) -> None:
    build = sub.add_parser("build", help="print the platform as a Ray Serve config file")
    _config_arguments(build)
    build.add_argument("-o", "--output", default="", help="write here instead of stdout")
    build.set_defaults(func=_cmd_build)

    dep = sub.add_parser("deploy", help="deploy or update the platform on a running Ray "
                         "cluster (Serve's REST API, as `serve deploy`)")
    _config_arguments(dep)
    dep.add_argument("--address", default="", help="the dashboard's http:// address "
                     "(default: $RAY_DASHBOARD_ADDRESS, or the one the cluster at "
                     "$RAY_ADDRESS / this node reports)")
    dep.add_argument("--wait", type=float, default=0, metavar="S",
                     help="wait up to S seconds until this version is RUNNING")
    dep.set_defaults(func=_cmd_deploy)

    status = sub.add_parser("status", help="Serve's status of the platform plus /readyz")
    status.add_argument("--address", default="", help="the dashboard's http:// address")
    status.add_argument("--profile", default=str(DEFAULT_PROFILE),
                        help="where the API listens (ingress host and port)")
    status.add_argument("--url", default="", help="the API's base URL instead")
    status.set_defaults(func=_cmd_status)

    cluster = sub.add_parser("cluster", help="what a cluster node runs before `ray start`"
                             ).add_subparsers(dest="cluster_command", required=True)
    env = cluster.add_parser("env", help="print the node's Ray environment (eval it)")
    env.add_argument("--profile", required=True)
    env.add_argument("--ssm-prefix", default="", help="read secrets (redis-url, "
                     "redis-password, hf-token) from AWS SSM Parameter Store under it")
    env.add_argument("--aws-region", default=os.environ.get("AWS_REGION", "us-west-2"))
    env.set_defaults(func=_cmd_cluster_env)
    redis = cluster.add_parser("redis", help="start the head's Redis unless an external one "
                               "is named; print its environment (eval it)")
    redis.add_argument("--profile", required=True)
    redis.add_argument("--port", type=int, default=6380)
    redis.add_argument("--bind", default="0.0.0.0",
                       help="address it listens on (the cluster's network)")
    redis.add_argument("--dir", default=DEFAULT_REDIS_DIR, help="data, config and password")
    redis.add_argument("--stop", action="store_true", help="stop the one --dir started")
    redis.set_defaults(func=_cmd_cluster_redis)
    stop = cluster.add_parser("stop-workers", help="`ray stop` on every worker of a `local` "
                              "provider config over SSH (`ray down` stops the head only); "
                              "run where `ray up` ran, before `ray down`")
    stop.add_argument("--config", required=True, help="the cluster launcher config")
    stop.add_argument("--timeout", type=float, default=120, help="seconds per worker")
    stop.set_defaults(func=_cmd_cluster_stop_workers)
