"""Run the whole platform on this machine: Redis, a local Ray cluster, Serve, the app.

Used by `sluice serve` (and so `make serve`), by the integration tests' session fixture and by
the benchmarks, so all three exercise the same startup path.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Self

import httpx

from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.deployments.ray_env import HEADER_GUARD, ray_environment
from sluice.observability.prometheus_server import LocalPrometheus
from sluice.schema.platform import PlatformConfig

__all__ = ["HEADER_GUARD", "LocalStack", "StackError"]

log = logging.getLogger(__name__)
APP_NAME = "sluice"
NODE_RESOURCE = "sluice_node"


class StackError(RuntimeError):
    pass


def _reachable(host: str) -> str:
    """Where a local client reaches a server bound to `host` (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


class LocalStack:
    """Owns every process it starts, and stops them all in stop()."""

    def __init__(
        self,
        config: PlatformConfig,
        run_dir: Path,
        *,
        redis_port: int = 6379,
        ray_num_cpus: int | None = None,
        ray_nodes: int = 1,
        ready_timeout_s: float = 600.0,
        prometheus_port: int | None = None,
    ) -> None:
        """ray_nodes > 1 starts Ray's own multi-node test cluster (ray.cluster_utils) on
        this machine: separate raylets and object stores, one `sluice_node` resource each,
        which a model's placement bundles can ask for to put one replica per node.
        prometheus_port: also run a Prometheus there, scraping the ingress with the shipped
        alert rules loaded (`sluice serve --observability`)."""
        self.config = config
        self.run_dir = run_dir
        self.redis = LocalRedisServer(run_dir / "redis", port=redis_port)
        self._ray_num_cpus = ray_num_cpus or max(4, os.cpu_count() or 1)
        self._ready_timeout_s = ready_timeout_s
        self._ray_nodes = ray_nodes
        self._cluster: Any = None
        self._ray_started = False
        self.prometheus: LocalPrometheus | None = None
        if prometheus_port is not None:
            self.prometheus = LocalPrometheus(run_dir / "prometheus", self.scrape_targets(),
                                              port=prometheus_port, http_sd=self.http_sd)

    @property
    def base_url(self) -> str:
        ingress = self.config.profile.ingress
        return f"http://{_reachable(ingress.host)}:{ingress.port}"

    @property
    def dashboard_url(self) -> str | None:
        """Ray's dashboard (also what `serve status` reads), when this stack runs one."""
        dashboard = self.config.profile.dashboard
        if not dashboard.enabled:
            return None
        return f"http://{_reachable(dashboard.host)}:{dashboard.port}"

    def scrape_targets(self) -> list[str]:
        """Where each ingress replica's /metrics is: on one machine the direct-ingress range
        holds one port, so one replica (with transport 'proxy', the proxy picks a replica per
        scrape: run one ingress replica, or set ingress.metrics_port: `http_sd`)."""
        ingress = self.config.profile.ingress
        return [f"{_reachable(ingress.host)}:{ingress.port}"]

    @property
    def http_sd(self) -> str | None:
        """The ingress's HTTP service discovery of every replica's own metrics endpoint,
        when the profile turns those on (`ingress.metrics_port`)."""
        if self.config.profile.ingress.metrics_port is None:
            return None
        return f"{self.base_url}/metrics/targets"

    @property
    def redis_url(self) -> str:
        """The profile's shared Redis, or the one this stack runs."""
        return self.config.profile.redis_url or self.redis.url

    def start(self) -> Self:
        try:
            if self.config.profile.redis_url is None:
                self._progress(f"starting redis-server on port {self.redis.port}")
                self.redis.start()
            self._start_ray_and_serve()
            self._deploy()
            self.wait_ready()
            if self.prometheus is not None:
                self._progress(f"starting Prometheus on port {self.prometheus.port}")
                self.prometheus.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_ray_and_serve(self) -> None:
        import ray
        from ray import serve

        # The profile is authoritative: a value inherited from a parent process (another
        # stack's ports, say) must not win over this stack's own.
        os.environ.update(self.ray_environment())
        self._progress(f"starting Ray ({self._ray_nodes} node(s), {self._ray_num_cpus} "
                       "logical CPUs each)")
        node = {"num_cpus": self._ray_num_cpus, "resources": {NODE_RESOURCE: 1}}
        dashboard = self.config.profile.dashboard
        ingress = self.config.profile.ingress
        # the custom resources a cluster profile pins its ingress replicas with (cluster.yaml
        # gives them to the head node): here the head has them, so it runs on one machine too
        pins = {name: amount * ingress.num_replicas for name, amount in ingress.resources.items()}
        head = {**node, "resources": {**node["resources"], **pins},
                "include_dashboard": dashboard.enabled,
                **({"dashboard_host": dashboard.host, "dashboard_port": dashboard.port}
                   if dashboard.enabled else {})}
        if self._ray_nodes > 1:
            from ray.cluster_utils import Cluster

            self._cluster = Cluster(initialize_head=True, head_node_args=head)
            for _ in range(self._ray_nodes - 1):
                self._cluster.add_node(**node)
            self._cluster.wait_for_nodes()
        ray.init(
            # "local": a new cluster even when RAY_ADDRESS is inherited from a parent's
            address=self._cluster.address if self._cluster else "local",
            **({} if self._cluster else head),
            configure_logging=True,
            logging_level=logging.WARNING,
            log_to_driver=os.environ.get("SLUICE_RAY_LOGS", "0") == "1",
        )
        self._ray_started = True
        # With direct ingress, Serve 2.60's controller starts one proxy on the head node
        # whatever proxy_location says (it is the fallback entrance, forwarding to the
        # ingress replicas); http_options is where it listens, so it gets a port of its own
        # and the ingress replica can take the API port.
        serve.start(http_options={"host": ingress.host, "port": ingress.serve_proxy_port})

    def ray_environment(self) -> dict[str, str]:
        """Environment every Ray process inherits: engine settings, Serve's switches."""
        return ray_environment(self.config.profile, single_machine=True)

    def _deploy(self) -> None:
        from ray import serve

        from sluice.deployments.app import build_app

        names = ", ".join(m.name for m in self.config.catalog.models)
        self._progress(f"deploying ingress + models ({names}); engines take about a minute")
        started = time.monotonic()
        serve.run(build_app(self.config, self.redis_url), name=APP_NAME, route_prefix="/",
                  blocking=False)
        self._progress(f"deployed in {time.monotonic() - started:.0f} s")

    def wait_ready(self) -> None:
        """Poll /readyz until every model answers, bounded by ready_timeout_s."""
        deadline = time.monotonic() + self._ready_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.base_url}/readyz", timeout=10)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1)
        raise StackError(f"not ready after {self._ready_timeout_s:.0f} s: {last}")

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        if self._ray_started:
            import ray
            from ray import serve

            self._progress("shutting down Serve and Ray")
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                self._ray_started = False
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
        self.redis.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _progress(message: str) -> None:
        print(f"[sluice] {message}", file=sys.stderr, flush=True)
