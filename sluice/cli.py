"""`sluice` command line: build demo models, serve the platform locally, deploy it to a
Ray cluster (`build`, `deploy`, `status`, `cluster`: sluice.deployments.cluster_cli)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.schema.platform import PlatformConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILE = REPO_ROOT / "platform" / "profiles" / "local-cpu.yaml"
DEFAULT_DEMO_ROOT = REPO_ROOT / "models" / "demo"


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from sluice.demo_models import build_demo_models

    build_demo_models(Path(args.root), force=args.force)
    return 0


def _example(base_url: str, dashboard_url: str | None) -> str:
    # Ray 2.60 turns token authentication on for a new local cluster (token in
    # ~/.ray/auth_token); its CLIs send the token only when told the mode
    dashboard = (f"Ray dashboard: {dashboard_url}  (also: RAY_AUTH_MODE=token "
                 ".venv/bin/serve status; RAY_AUTH_MODE=token .venv/bin/ray status)"
                 if dashboard_url else "Ray dashboard: off (--no-dashboard)")
    return f"""
Sluice is serving at {base_url}/v1  (models: small, large, auto)
{dashboard}

  curl -s {base_url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base_url}/v1', api_key='-'); \\
print(c.chat.completions.create(model='small', messages=[{{'role': 'user', 'content': 'Hi'}}], \\
max_tokens=16).choices[0].message.content)"

The demo models have random weights: their answers are noise. Press Ctrl-C to stop.
"""


def _cmd_serve(args: argparse.Namespace) -> int:
    from sluice.deployments.local_stack import LocalStack
    from sluice.schema.loading import load_platform_config

    try:
        config = load_platform_config(Path(args.profile), root=REPO_ROOT)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"sluice serve: invalid configuration ({args.profile}):\n{exc}", file=sys.stderr)
        return 2
    try:
        if args.port:
            config = _with_profile(config, "ingress", port=args.port)
        if args.no_dashboard:
            config = _with_profile(config, "dashboard", enabled=False)
        config = _with_replicas(config, args.replicas)
    except ValueError as exc:
        print(f"sluice serve: {exc}", file=sys.stderr)
        return 2
    stack = LocalStack(config, Path(args.run_dir), redis_port=args.redis_port,
                       prometheus_port=args.prometheus_port if args.observability else None)
    # While starting, Ctrl-C or SIGTERM interrupts the start-up, which stops what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.start()
    except KeyboardInterrupt:
        print("[sluice] interrupted while starting; stopped", file=sys.stderr)
        return 130
    try:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(_example(stack.base_url, stack.dashboard_url), file=sys.stderr, flush=True)
        if stack.prometheus is not None:
            print(f"Prometheus: {stack.prometheus.url} (scraping {stack.scrape_targets()}, "
                  "alert rules of platform/observability/alerts.yaml loaded; the Grafana "
                  "dashboard is platform/observability/grafana-dashboard.json)\n",
                  file=sys.stderr, flush=True)
        stop.wait()
    finally:
        stack.stop()
    return 0


def _with_profile(config: PlatformConfig, section: str, **values: object) -> PlatformConfig:
    """The config with one profile section's fields replaced, validated again."""
    current = getattr(config.profile, section)
    updated = type(current).model_validate({**current.model_dump(), **values})
    return config.model_copy(
        update={"profile": config.profile.model_copy(update={section: updated})})


def _with_replicas(config: PlatformConfig, overrides: list[str]) -> PlatformConfig:
    """Apply `--replicas MODEL=N` overrides (fixed N replicas)."""
    models = dict(config.profile.models)
    for item in overrides:
        name, _, count = item.partition("=")
        if name not in models or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--replicas {item!r}: expected MODEL=N with MODEL one of "
                             f"{sorted(models)} and N >= 1")
        models[name] = models[name].model_copy(
            update={"min_replicas": int(count), "max_replicas": int(count)})
    profile = config.profile.model_copy(update={"models": models})
    return config.model_copy(update={"profile": profile})


def _cmd_catalog_prices(args: argparse.Namespace) -> int:
    from sluice.accounting.price_catalog import lookup
    from sluice.schema.loading import load_platform_config

    config = load_platform_config(Path(args.profile), root=REPO_ROOT)
    for m in config.catalog.models:
        pricing = m.pricing
        if pricing is None:
            print(f"{m.name}: not priced")
        elif pricing.mode == "catalog":
            assert pricing.catalog is not None
            try:
                looked = lookup(pricing.catalog)
            except ValueError as exc:
                print(f"{m.name}: {exc}")
                return 2
            p = looked.prices
            window = (f"; its context window {looked.context_window:,}"
                      + ("" if looked.context_window in (None, m.context_length)
                         else f" (the catalog says {m.context_length:,})")
                      if looked.context_window else "")
            print(f"{m.name}: ${p.input_per_1m:g} input, ${p.output_per_1m:g} output"
                  + (f", ${p.cached_input_per_1m:g} cached input"
                     if p.cached_input_per_1m is not None else "")
                  + (f", ${p.cache_write_per_1m:g} cache write"
                     if p.cache_write_per_1m is not None else "")
                  + f" per 1M tokens, from {looked.package} ({pricing.catalog.provider}/"
                  f"{looked.model}){window}")
        else:
            print(f"{m.name}: {pricing.mode} {getattr(pricing, pricing.mode).model_dump()}")
    return 0


def _cmd_keys_new(args: argparse.Namespace) -> int:
    """A fresh secret for the client, and the entry (its hash only) for the profile."""
    import secrets

    import yaml

    from sluice.accounting.tenancy import key_hash
    from sluice.schema.accounting import ApiKey

    secret = "sk-sluice-" + secrets.token_urlsafe(32)
    entry = ApiKey(id=args.id, tenant=args.tenant, sha256=key_hash(secret), admin=args.admin)
    print(f"# give the client this key (it is not stored anywhere): {secret}")
    print("# add under accounting.auth.keys in the profile:")
    print(yaml.safe_dump([entry.model_dump()], sort_keys=False), end="")
    return 0


def _key_store_url(args: argparse.Namespace) -> str:
    """--redis-url, else $SLUICE_REDIS_URL, else the profile's ledger Redis, else the Redis
    `sluice serve` runs (127.0.0.1, --redis-port)."""
    import os

    if args.redis_url or os.environ.get("SLUICE_REDIS_URL"):
        return str(args.redis_url or os.environ["SLUICE_REDIS_URL"])
    from sluice.schema.loading import load_platform_config

    profile = load_platform_config(Path(args.profile), root=REPO_ROOT).profile
    return (profile.accounting.ledger.redis_url or profile.redis_url
            or f"redis://127.0.0.1:{args.redis_port}")


def _cmd_keys(args: argparse.Namespace) -> int:
    """create | list | rotate | revoke, straight against the key store in Redis."""
    import asyncio
    import json

    from sluice.accounting.key_admin import key_fields
    from sluice.accounting.key_store import KeyStore
    from sluice.cache_tier.redis_target import async_client
    from sluice.errors import SluiceError

    async def run() -> object:
        store = KeyStore(async_client(_key_store_url(args), 5.0))
        try:
            if args.keys_command == "list":
                return [k.public() for k in await store.list()]
            if args.keys_command == "create":
                fields = {"id": args.id, "tenant": args.tenant, "admin": args.admin,
                          "models": args.models.split(",") if args.models else [],
                          "requests_per_minute": args.rpm, "tokens_per_minute": args.tpm,
                          "daily_usd": args.daily_usd, "monthly_usd": args.monthly_usd}
                raw = json.dumps({k: v for k, v in fields.items() if v not in (None, [])})
                secret, key = await store.create(key_fields(raw.encode()))
                return {**key.public(), "key": secret}
            if args.keys_command == "rotate":
                secret, key = await store.rotate(args.id)
                return {**key.public(), "key": secret}
            return {**(await store.revoke(args.id)).public(), "deleted": True}
        finally:
            await store.close()

    try:
        result = asyncio.run(run())
    except SluiceError as err:
        print(f"sluice keys {args.keys_command}: {err.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.keys_command in ("create", "rotate"):
        print("# the secret is in \"key\": give it to the client; only its hash is stored",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model utilities").add_subparsers(
        dest="models_command", required=True
    )
    demo = models.add_parser("build-demo", help="build the random-weight demo models")
    demo.add_argument("--root", default=str(DEFAULT_DEMO_ROOT))
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.set_defaults(func=_cmd_build_demo)

    serve = sub.add_parser("serve", help="run Redis, Ray, Serve and the app on this machine")
    serve.add_argument("--profile", default=str(DEFAULT_PROFILE))
    serve.add_argument("--port", type=int, default=0, help="override the profile's HTTP port")
    serve.add_argument("--redis-port", type=int, default=6379)
    serve.add_argument("--run-dir", default=str(REPO_ROOT / ".run"),
                       help="where the stack keeps its files: logs, and the data of the Redis "
                       "it starts (the ledger, caches and rollouts survive a restart there)")
    serve.add_argument("--observability", action="store_true",
                       help="also run Prometheus scraping the ingress, alert rules loaded")
    serve.add_argument("--prometheus-port", type=int, default=9090)
    serve.add_argument("--no-dashboard", action="store_true",
                       help="do not start Ray's dashboard (saves a process on small machines)")
    serve.add_argument("--replicas", action="append", default=[], metavar="MODEL=N",
                       help="run N replicas of MODEL (e.g. to validate a capacity plan)")
    serve.set_defaults(func=_cmd_serve)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command",
                                                                   required=True)
    new_key = keys.add_parser("new", help="mint a key: print the secret and its profile entry")
    new_key.add_argument("--id", required=True, help="key id (what reports show)")
    new_key.add_argument("--tenant", required=True)
    new_key.add_argument("--admin", action="store_true", help="may read every tenant's usage")
    new_key.set_defaults(func=_cmd_keys_new)
    store_help = {"create": "create a key in the key store (in force within seconds)",
                  "list": "list the key store's keys (never their secrets)",
                  "rotate": "give a stored key a new secret (the old one is refused)",
                  "revoke": "revoke a stored key (refused by every ingress replica)"}
    for command, text in store_help.items():
        cmd = keys.add_parser(command, help=text)
        cmd.add_argument("--profile", default=str(DEFAULT_PROFILE))
        cmd.add_argument("--redis-url", default="", help="the key store's Redis (default: "
                         "$SLUICE_REDIS_URL, the profile's, or the one `sluice serve` runs)")
        cmd.add_argument("--redis-port", type=int, default=6379)
        if command != "list":
            cmd.add_argument("id" if command != "create" else "--id",
                             **({"required": True} if command == "create" else {}),
                             help="key id (what reports show)")
        if command == "create":
            cmd.add_argument("--tenant", required=True)
            cmd.add_argument("--models", default="", help="comma-separated models it may "
                             "use (default: all)")
            cmd.add_argument("--rpm", type=int, help="requests per minute")
            cmd.add_argument("--tpm", type=int, help="tokens per minute")
            cmd.add_argument("--daily-usd", type=float, help="budget per UTC day")
            cmd.add_argument("--monthly-usd", type=float, help="budget per UTC month")
            cmd.add_argument("--admin", action="store_true", help="may manage keys and "
                             "read every tenant's usage")
        cmd.set_defaults(func=_cmd_keys)
    from sluice.route_cli import add_commands as add_route_commands

    add_route_commands(sub)
    from sluice.rollout_cli import add_commands as add_rollout_commands

    add_rollout_commands(sub)
    catalog = sub.add_parser("catalog", help="the model catalog").add_subparsers(
        dest="catalog_command", required=True)
    prices = catalog.add_parser("prices", help="what each model is priced at, and where "
                                "`mode: catalog` prices come from")
    prices.add_argument("--profile", default=str(DEFAULT_PROFILE))
    prices.set_defaults(func=_cmd_catalog_prices)
    sub.add_parser("tune", add_help=False, help="Bayesian search of a model's engine "
                   "settings for goodput under its SLOs (`sluice tune --help`)")
    from sluice.deployments.cluster_cli import add_commands

    add_commands(sub)
    return parser


def _cmd_tune(argv: list[str]) -> int:
    """`sluice tune ...`: loadtests/tune.py, which drives the capacity planner's load."""
    if (REPO_ROOT / "loadtests").is_dir() and str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # the checkout this editable install came from
    try:
        from loadtests.tune import main as tune
    except ImportError as exc:
        print(f"sluice tune: {exc}. It runs the capacity planner in loadtests/: run it from "
              "a checkout of Sluice with the `tune` extra installed (`make setup` does).",
              file=sys.stderr)
        return 2
    return tune(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tune"]:  # every option is the tuner's own (`sluice tune --help`)
        return _cmd_tune(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
