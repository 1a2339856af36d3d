"""The Prometheus configs Sluice ships or writes, checked by Prometheus' own `promtool check
config` (which also loads the rule files they name): the cluster's
(platform/observability/prometheus-cluster.yml) and LocalPrometheus's, over its file of
targets or over the ingress's HTTP service discovery.

`make setup` (target observability-tools) installs promtool; without it these fail rather
than skip, as tests/unit/test_observability_assets.py does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.observability.prometheus_server import RULES, LocalPrometheus
from sluice.observability.scrape_targets import JOB
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "platform" / "observability" / "prometheus-cluster.yml"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"  # written by Ray on the head


def _check_config(path: Path) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: `make observability-tools` (part of `make "
                    "setup`) installs it (Debian package prometheus)")
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_the_cluster_config_passes_promtool_with_the_alert_rules() -> None:
    out = _check_config(CLUSTER)
    assert "SUCCESS: 1 rule files found" in out and "rules found" in out


def test_the_cluster_config_discovers_ray_and_every_ingress_replica() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    assert [(CLUSTER.parent / f).resolve() for f in config["rule_files"]] == [RULES]
    jobs = _jobs(config)
    assert set(jobs) == {"ray", JOB}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [RAY_SD_FILE]
    ingress = jobs[JOB]
    assert ingress.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = ingress["http_sd_configs"]
    # Prometheus on the head, through Serve's proxy on the cluster profile's API port
    profile = load_platform_config(ROOT / "platform/profiles/gpu-cluster.yaml", root=ROOT)
    assert sd["url"] == f"http://127.0.0.1:{profile.profile.ingress.port}/metrics/targets"
    assert profile.profile.ingress.metrics_port is not None  # the targets exist there


def test_local_prometheus_keeps_its_file_of_targets_by_default(tmp_path: Path) -> None:
    server = LocalPrometheus(tmp_path, ["127.0.0.1:8000"], scrape_interval_s=5)
    config = server.config()
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB and "http_sd_configs" not in job
    assert job["file_sd_configs"] == [{"files": [str(tmp_path / "targets.json")],
                                       "refresh_interval": "5s"}]
    server.write_targets(server.targets)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    _check_config(path)


def test_local_prometheus_can_follow_the_ingress_http_service_discovery(
        tmp_path: Path) -> None:
    url = "http://127.0.0.1:8795/metrics/targets"
    server = LocalPrometheus(tmp_path, http_sd=url, scrape_interval_s=2)
    config = server.config()
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB and "file_sd_configs" not in job
    assert job["http_sd_configs"] == [{"url": url, "refresh_interval": "2s"}]
    assert config["rule_files"] == [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    _check_config(path)
