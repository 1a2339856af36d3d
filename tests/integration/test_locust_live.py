"""A bounded headless Locust run against the live stack: the custom streaming metrics (TTFT,
ITL, E2E with tokens) are recorded and the CSV and HTML reports are written."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_headless_locust_records_streaming_metrics_and_writes_reports(base_url: str,
                                                                     tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
         "--host", base_url, "-u", "3", "-r", "3", "-t", "12s", "--stop-timeout", "20",
         "--csv", str(prefix), "--html", f"{prefix}.html", "--model", "small",
         "ShortChatUser", "RagUser", "MultiTurnUser"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: Locust saw failures
    with open(f"{prefix}_stats.csv") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    for kind in ("TTFT", "ITL", "E2E"):
        timed = [r for (t, _), r in rows.items() if t == kind and int(r["Request Count"]) > 0]
        assert timed, f"no {kind} rows in {sorted(rows)}"
    e2e = [r for (t, _), r in rows.items() if t == "E2E"]
    assert sum(int(r["Failure Count"]) for r in e2e) == 0, proc.stderr[-3000:]
    assert all(float(r["Average Content Size"]) > 0 for r in e2e)  # output tokens per request
    ttft = rows.get(("TTFT", "short-chat"))
    assert ttft is not None and 0 < float(ttft["Median Response Time"]) < 10_000
    html = Path(f"{prefix}.html").read_text()
    assert "TTFT" in html and "ITL" in html
