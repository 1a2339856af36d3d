"""The platform as a standard Ray Serve config file, and what its builder reads back.

`sluice build` writes the config (the shape of `ray.serve.schema.ServeDeploySchema`, which
`serve deploy`, `serve status`, `serve config` and the dashboard understand); `serve deploy`
or `sluice deploy` hand it to Serve, whose controller calls the application builder
(`sluice.deployments.app:app_builder`) with the config's `args` on the cluster.

The args name the platform files by path on the cluster and carry a fingerprint of their
contents. So a changed catalog, profile or routes file changes the config itself and Serve
rolls it out as a config update (an unchanged file set is a no-op), and a cluster whose files
differ from the ones the config was built from refuses to build instead of deploying
something nobody reviewed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sluice.schema.loading import load_platform_config, load_routing_config, load_yaml
from sluice.schema.platform import PlatformConfig, Profile
from sluice.schema.redis_url import validate_url
from sluice.schema.serve_app import ServeAppArgs

APP_NAME = "sluice"  # the same name `sluice serve` deploys under (LocalStack)
IMPORT_PATH = "sluice.deployments.app:app_builder"
INGRESS_DEPLOYMENT = "SluiceIngress"
LLM_DEPLOYMENT = "SluiceLLMServer:{model}"
HEAD_REDIS_PORT = 6380  # the head's Redis (`sluice cluster redis`); Ray's GCS has 6379
ENV_REDIS_URL = "SLUICE_REDIS_URL"
ENV_REDIS_PASSWORD = "SLUICE_REDIS_PASSWORD"
ENV_HEAD_REDIS_PORT = "SLUICE_HEAD_REDIS_PORT"


def _under(root: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else root / candidate


def platform_files(args: ServeAppArgs) -> dict[str, Path]:
    """The files the builder reads, by role: the profile, its catalog, the routing file."""
    root = Path(args.root).expanduser()
    profile_path = _under(root, args.profile)
    profile = Profile.model_validate(load_yaml(profile_path))
    files = {"profile": profile_path, "catalog": (profile_path.parent / profile.catalog)}
    if args.routes:
        files["routes"] = _under(root, args.routes)
    elif profile.routing:
        files["routes"] = profile_path.parent / profile.routing
    return {role: path.resolve() for role, path in files.items()}


def fingerprint(files: Mapping[str, Path]) -> str:
    """sha256 of the files' roles and contents (not their paths, which differ per machine).
    The routing file pins its classifiers by their own sha256, so it covers them."""
    digest = hashlib.sha256()
    for role in sorted(files):
        data = files[role].read_bytes()
        digest.update(f"{role}\0{len(data)}\0".encode())
        digest.update(data)
    return "sha256:" + digest.hexdigest()


def load_config(args: ServeAppArgs) -> PlatformConfig:
    """The validated platform the args name; refuses files that are not the ones built from."""
    files = platform_files(args)
    if args.fingerprint is not None:
        found = fingerprint(files)
        if found != args.fingerprint:
            raise ValueError(
                f"the platform files under {args.root} ({found}) are not the ones this Serve "
                f"config was built from ({args.fingerprint}): copy them to the cluster "
                "(make cluster-deploy) or run `sluice build` again")
    root = Path(args.root).expanduser().resolve()
    config = load_platform_config(files["profile"], root=root)
    if args.routes:  # validated again as a whole: the routes must name catalog models
        config = PlatformConfig(profile=config.profile, catalog=config.catalog, root=root,
                                routing=load_routing_config(files["routes"]))
    return config


def build_args(profile: Path, *, root: Path, routes: Path | None = None,
               cluster_root: str | None = None, redis_url: str | None = None,
               ) -> tuple[ServeAppArgs, PlatformConfig]:
    """The args of the config `sluice build` writes, from files on this machine, and the
    platform they name (validated here as the builder will validate it there).

    root: where platform/ is here; cluster_root: where it is on the cluster (default: the
    same place, for a cluster on this machine). Paths under root are written relative to it.
    """
    root = root.resolve()

    def portable(path: Path) -> str:
        path = path.resolve()
        if path.is_relative_to(root):
            return str(path.relative_to(root))
        if cluster_root is not None:
            raise ValueError(f"{path} is not under {root}: the cluster cannot find it under "
                             f"{cluster_root}")
        return str(path)

    local = ServeAppArgs(root=str(root), profile=portable(profile),
                         routes=portable(routes) if routes else None, redis_url=redis_url)
    config = load_config(local)  # the builder's own validation, before anything is deployed
    return local.model_copy(update={"root": cluster_root or str(root),
                                    "fingerprint": fingerprint(platform_files(local))}), config


def deployment_names(config: PlatformConfig) -> list[str]:
    """The deployments the builder creates (Ray Serve LLM names each `<class>:<model id>`;
    tests/unit/test_cluster_build.py checks these against a built app)."""
    return [INGRESS_DEPLOYMENT, *(LLM_DEPLOYMENT.format(model=m.name)
                                  for m in config.catalog.local)]


def serve_config(args: ServeAppArgs, config: PlatformConfig) -> dict[str, Any]:
    """The ServeDeploySchema document: where Serve's proxy listens, and the one app."""
    ingress = config.profile.ingress
    app: dict[str, Any] = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": args.model_dump(exclude_none=True),
    }
    surge = config.profile.max_surge_percent
    if surge:  # how Serve replaces replicas on a config update (a lightweight option)
        app["deployments"] = [{"name": name, "max_surge_percent": surge}
                              for name in deployment_names(config)]
    return {
        # with 'direct' ingress Serve 2.60 runs one proxy on the head whatever this says
        "proxy_location": "EveryNode" if ingress.transport == "proxy" else "HeadOnly",
        "http_options": {"host": ingress.host, "port": ingress.serve_proxy_port},
        "applications": [app],
    }


def head_host() -> str | None:
    """The head node's address as the cluster knows it (Ray's head-node resource), when this
    process is connected to Ray (as Serve's build task is); None otherwise."""
    import ray

    if not ray.is_initialized():
        return None
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeManagerAddress"])
    return None


def resolve_redis_url(args: ServeAppArgs, profile: Profile, environ: Mapping[str, str],
                      find_head: Callable[[], str | None] = head_host) -> str:
    """The shared Redis every replica uses: the args', $SLUICE_REDIS_URL, the profile's, or
    the head node's (never 127.0.0.1 on a cluster: replicas on other nodes must reach it)."""
    if args.redis_url:
        return args.redis_url
    if environ.get(ENV_REDIS_URL):
        return validate_url(environ[ENV_REDIS_URL])
    if profile.redis_url:
        return profile.redis_url
    host = find_head()
    if host is None:
        raise ValueError(f"no Redis: set {ENV_REDIS_URL} or the profile's redis_url, or build "
                         "on a Ray cluster whose head runs `sluice cluster redis`")
    password = environ.get(ENV_REDIS_PASSWORD)
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{int(environ.get(ENV_HEAD_REDIS_PORT, HEAD_REDIS_PORT))}"
