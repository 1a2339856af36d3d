"""The environment every Ray process of the platform starts with.

Ray Serve reads its RAY_SERVE_* switches (throughput-optimized mode, direct ingress, the
proxy's header guard) once, when each controller, proxy and replica process starts, so they
must be in the environment of `ray start` (or of the driver that starts a local cluster), not
in a Serve config. One function says what they are, for `sluice serve` (LocalStack) and for
cluster nodes (`sluice cluster env`, run before `ray start` in cluster.yaml).
"""

from __future__ import annotations

from sluice.schema.platform import Profile

HEADER_GUARD = "sluice.deployments.header_guard:middlewares"  # (header_guard.CALLBACK)

# vLLM, LMCache and Ray report usage to their makers' servers by default. A serving platform
# holds its users' prompts on private networks: nothing of it calls out unless a profile's
# engine_env / ray_env turns a report back on.
NO_USAGE_REPORTS = {
    "DO_NOT_TRACK": "1",              # the cross-tool convention (vLLM and LMCache read it)
    "VLLM_NO_USAGE_STATS": "1",
    "LMCACHE_TRACK_USAGE": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ray_environment(profile: Profile, *, single_machine: bool) -> dict[str, str]:
    """Environment of every Ray process: engine settings, Serve's switches.

    single_machine: a local run with nothing in front of the ingress, so a stopping
    direct-ingress replica need not wait for a load balancer to notice it.
    """
    ingress = profile.ingress
    env = {
        # Ray lowers its workers to nice 15 by default; the engines are the workload here.
        "RAY_worker_niceness": "0",
        # request headers Serve itself reads are made safe in front of it (a raw echo of
        # x-request-id, a 500 on a non-UTF-8 byte): sluice.deployments.header_guard
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": HEADER_GUARD,
        **NO_USAGE_REPORTS,
        **profile.engine_env,
        **profile.ray_env,
    }
    if single_machine:
        # A direct-ingress replica waits at least this long before it stops, for an external
        # load balancer to notice; nothing balances a local run, so Ctrl-C (serve.shutdown,
        # 30 s budget) does not wait out the 30 s default
        env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    # Ray Serve's throughput-optimized mode: user code and router on the replica's own
    # event loop, gRPC between Serve components, buffered request logs.
    env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    if ingress.transport == "direct":
        # ... and the ingress replica listening for HTTP itself, on exactly this port.
        env.update({
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DEFAULT_HTTP_HOST": ingress.host,
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(ingress.port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(ingress.port + 1),
        })
    return env
