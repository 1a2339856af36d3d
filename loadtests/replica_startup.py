"""Replica start-up delay on the real stack: how long a new `small` replica takes from Serve's
decision to add it until it is RUNNING (actor, vLLM engine, weights). The autoscaling
simulation (`python -m loadtests.autoscale_sim --startup-s ...`) takes this figure.

Beside a running stack, each repetition deploys `small` again as an application of its own
(one replica, the same LLMConfig the platform uses), times it to RUNNING, and deletes it.

    python -m loadtests.replica_startup --out bench-results/replica-startup
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "SluiceLLMServer:small"


def _config(replicas: int) -> Any:
    from sluice.schema.loading import load_platform_config

    base = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    profile = base.profile.model_copy(update={
        # Serve's proxy: with direct ingress the probe application's replica would need an
        # HTTP port of its own, and the profile's port range has none to spare
        "ingress": base.profile.ingress.model_copy(update={"port": 8796,
                                                           "transport": "proxy"}),
        "semantic_cache": base.profile.semantic_cache.model_copy(update={"enabled": False}),
        "dashboard": base.profile.dashboard.model_copy(update={"enabled": False}),
        "models": {**base.profile.models, "small": base.profile.models["small"].model_copy(
            update={"min_replicas": replicas, "max_replicas": replicas})}})
    return base.model_copy(update={"profile": profile})


PROBE_APP = "startup-probe"


def _running(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or DEPLOYMENT not in status.deployments:
        return 0
    return int(status.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0))


def _start_one(stack: Any, timeout_s: float) -> float:
    """Deploy one `small` replica as its own application; seconds until it is RUNNING."""
    from ray import serve

    from sluice.deployments.llm_server import build_llm_deployments

    app = build_llm_deployments(stack.config, stack.redis_url)["small"]
    started = time.monotonic()
    serve.run(app, name=PROBE_APP, route_prefix=None, blocking=False)
    while time.monotonic() - started < timeout_s:
        if _running(PROBE_APP) == 1:
            elapsed = time.monotonic() - started
            serve.delete(PROBE_APP)
            return elapsed
        time.sleep(0.25)
    raise TimeoutError(f"the replica was not running after {timeout_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/replica-startup")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from sluice.deployments.local_stack import LocalStack

    args.out.mkdir(parents=True, exist_ok=True)
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sluice-startup-") as tmp, \
            LocalStack(_config(1), Path(tmp), redis_port=6406) as stack:
        for rep in range(args.reps):
            times.append(_start_one(stack, 600))
            print(f"[startup] repetition {rep + 1}/{args.reps}: replica running after "
                  f"{times[-1]:.1f} s", flush=True)
    result = {"deployment": DEPLOYMENT, "startup_s": [round(t, 1) for t in times],
              "median_s": round(statistics.median(times), 1)}
    (args.out / "startup.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
