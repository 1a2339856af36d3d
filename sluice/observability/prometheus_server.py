"""A local Prometheus server scraping the ingress, with the shipped alert rules loaded.

For `sluice serve --observability` (`make observe`) and the live observability test: the real
Prometheus (Debian's `prometheus` package, which `make setup` installs for promtool) as a plain
process, its data under run_dir. Its targets come from a file it writes (`targets`), or from
the ingress's HTTP service discovery (`http_sd`: `GET /metrics/targets`, every ingress
replica's own metrics endpoint when the profile sets `ingress.metrics_port`). In a cluster,
run Prometheus on the head with platform/observability/prometheus-cluster.yml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

RULES = Path(__file__).resolve().parents[2] / "platform" / "observability" / "alerts.yaml"


class PrometheusError(RuntimeError):
    pass


class LocalPrometheus:
    """Start prometheus on loopback scraping `targets` (host:port), or the targets an HTTP
    service-discovery URL lists (`http_sd`); stop it in stop()."""

    def __init__(self, run_dir: Path, targets: Sequence[str] = (), *, port: int = 9090,
                 scrape_interval_s: float = 5.0, rule_files: Sequence[Path] = (RULES,),
                 http_sd: str | None = None) -> None:
        """http_sd: e.g. `http://127.0.0.1:8000/metrics/targets`, read every scrape
        interval, instead of the file of `targets`."""
        self.run_dir = run_dir
        self.port = port
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = list(rule_files)
        self.http_sd = http_sd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """prometheus.yml: one job over a file of targets (rewritten when replicas change),
        or over the HTTP service discovery."""
        interval = f"{self.scrape_interval_s:g}s"
        discovery: dict[str, Any] = (
            {"http_sd_configs": [{"url": self.http_sd, "refresh_interval": interval}]}
            if self.http_sd is not None else
            {"file_sd_configs": [{"files": [str(self.run_dir / "targets.json")],
                                  "refresh_interval": interval}]})
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": "sluice-ingress", "metrics_path": "/metrics",
                                **discovery}],
        }

    def write_targets(self, targets: Sequence[str]) -> None:
        self.targets = list(targets)
        path = self.run_dir / "targets.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": self.targets, "labels": {}}]))
        tmp.replace(path)  # Prometheus never reads half a file

    def start(self, timeout_s: float = 30.0) -> Self:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus not found; `make observability-tools` installs "
                                  "it (Debian package prometheus)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_targets(self.targets)
        config = self.run_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self._proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.run_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
            stdout=(self.run_dir / "prometheus.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)  # stopped by stop(), not by a terminal's Ctrl-C
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited; see {self.run_dir / 'prometheus.log'}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise PrometheusError(f"prometheus not ready on {self.port} in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
