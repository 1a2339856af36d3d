"""Threshold calibration: the simulated cascade, target picking, and a fit on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sluice.router.calibrate import CalibrationSpec, calibrate, simulate
from sluice.router.dataset import load_pairs
from sluice.schema.routing import RoutingConfig


def test_simulate_counts_both_stages_and_costs() -> None:
    small = np.array([1, 0, 0, 1.0])
    large = np.array([1, 1, 1, 1.0])
    pre = np.array([0.9, 0.1, 0.9, 0.9])  # query 1 pre-routed
    judge = np.array([0.9, 0.9, 0.2, 0.9])  # query 2 escalated
    out = simulate(small, large, pre, 0.5, judge, 0.5, price_ratio=10)
    assert out.share_large == 0.5 and out.quality == 1.0
    # small ran on 3 queries, large on 2: (3 + 2 * 10) / (4 * 10)
    assert out.relative_cost == pytest.approx(23 / 40)
    assert simulate(small, large, None, 0, None, 0, 10).share_large == 0.0


def _synthetic(path: Path, n: int = 120) -> Path:
    """Small answers whose arithmetic holds are right; those whose arithmetic is off are not."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        good = bool(rng.random() < 0.6)
        shown = a * b if good else a * b + int(rng.integers(1, 9))
        rows.append({"id": i, "prompt": f"What is {a} times {b}?",
                     "weak_response": f"{a} * {b} = {shown}\n#### {shown}",
                     "weak_correct": good, "strong_correct": True})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


class NoEmbedder:
    def embed(self, texts):
        return np.zeros((len(texts), 4))


@pytest.mark.parametrize("target", ["large_share=0.4", "quality=0.95", "cost=0.6"])
def test_calibrate_meets_targets_held_out_and_writes_a_valid_route(tmp_path: Path,
                                                                   target: str) -> None:
    data = _synthetic(tmp_path / "pairs.jsonl")
    spec = CalibrationSpec(data=data, target=target, judge="answer-checks", seed=1)
    route = calibrate(load_pairs(data), spec, NoEmbedder(), tmp_path / "art", tmp_path)
    config = RoutingConfig.model_validate({"routes": [route], "base_dir": tmp_path})
    judge = config.routes[0].judge
    assert judge is not None and judge.artifact is not None
    assert config.artifact_path(judge.artifact).is_file()
    held = judge.provenance.held_out
    if target.startswith("large_share"):
        assert held["share_large"] == pytest.approx(0.4, abs=0.1)
    elif target.startswith("quality"):
        assert held["quality_vs_large"] >= 0.9
        assert held["share_large"] < 0.6  # far below routing all 40% failures at random
    else:
        assert held["relative_cost"] <= 0.65
    assert judge.provenance.data_sha256 and judge.provenance.target == target


def test_bad_target_is_rejected(tmp_path: Path) -> None:
    data = _synthetic(tmp_path / "pairs.jsonl")
    with pytest.raises(ValueError, match="target must be"):
        calibrate(load_pairs(data), CalibrationSpec(data=data, target="share:0.5"),
                  NoEmbedder(), tmp_path, tmp_path)


def test_prompt_only_route_from_a_file_without_responses(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in _synthetic(tmp_path / "p.jsonl").read_text().split("\n")]
    for r in rows:
        del r["weak_response"]
    data = tmp_path / "no-answers.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    queries = load_pairs(data)
    with pytest.raises(ValueError, match="no small-model responses"):
        calibrate(queries, CalibrationSpec(data=data, target="large_share=0.3"),
                  NoEmbedder(), tmp_path, tmp_path)
    route = calibrate(queries, CalibrationSpec(data=data, target="large_share=0.3",
                                               judge=None), NoEmbedder(), tmp_path, tmp_path)
    config = RoutingConfig.model_validate({"routes": [route], "base_dir": tmp_path})
    assert config.routes[0].judge is None and config.routes[0].pre_router is not None
