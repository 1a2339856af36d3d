"""`sluice` command line: build demo models, serve the platform locally."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILE = REPO_ROOT / "platform" / "profiles" / "local-cpu.yaml"
DEFAULT_DEMO_ROOT = REPO_ROOT / "models" / "demo"


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from sluice.demo_models import build_demo_models

    build_demo_models(Path(args.root), force=args.force)
    return 0


def _example(base_url: str) -> str:
    return f"""
Sluice is serving at {base_url}/v1  (models: small, large, auto)

  curl -s {base_url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base_url}/v1', api_key='-'); \\
print(c.chat.completions.create(model='small', messages=[{{'role': 'user', 'content': 'Hi'}}], \\
max_tokens=16).choices[0].message.content)"

The demo models have random weights: their answers are noise. Press Ctrl-C to stop.
"""


def _cmd_serve(args: argparse.Namespace) -> int:
    from sluice.config import load_platform_config
    from sluice.deployments.local_stack import LocalStack

    config = load_platform_config(Path(args.profile), root=REPO_ROOT)
    if args.port:
        ingress = config.profile.ingress.model_copy(update={"port": args.port})
        config = config.model_copy(
            update={"profile": config.profile.model_copy(update={"ingress": ingress})}
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack(config, REPO_ROOT / ".run", redis_port=args.redis_port)
    with stack:
        print(_example(stack.base_url), file=sys.stderr, flush=True)
        stop.wait()
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
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
