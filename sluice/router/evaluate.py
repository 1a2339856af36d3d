"""Offline evaluation of routers and judges on a labeled pair file, honestly held out.

For each seed: a stratified split into a calibration part and a test part; every scorer is
fitted, and its threshold calibrated, on the calibration part only; everything reported is
measured on the test part. Point estimates are means over seeds; 95% intervals come from
bootstrap resamples of each seed's test part, pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from sluice.router.dataset import LabeledQuery, strata
from sluice.router.metrics import (
    Curve,
    oracle_curve,
    random_curve,
    relative_cost,
    routing_curve,
    threshold_for_share,
)
from sluice.router.scorers import QualityScorer

ScorerFactory = Callable[[], QualityScorer]


@dataclass(frozen=True)
class EvalSettings:
    seeds: int = 5
    test_fraction: float = 0.5
    bootstrap: int = 200
    price_ratio: float = 20.0  # large / small cost per query
    target_share: float = 0.5  # large-call share the calibrated threshold aims at
    quality_target: float = 0.95  # fraction of the large model's quality


@dataclass
class ScorerResult:
    name: str
    cascade: bool
    curves: list[Curve] = field(default_factory=list)
    boot: dict[str, list[float]] = field(default_factory=dict)
    calibrated: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _arrays(queries: Sequence[LabeledQuery]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([q.small_quality for q in queries]),
            np.array([q.large_quality for q in queries]))


def cv_scores(factory: ScorerFactory, calib: list[LabeledQuery], seed: int) -> np.ndarray:
    """Out-of-fold scores on the calibration part, so thresholds are not fit on seen data."""
    out = np.zeros(len(calib))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    labels = np.array([q.small_is_enough for q in calib])
    for train_idx, held_idx in folds.split(np.zeros(len(calib)), labels):
        scorer = factory().fit([calib[i] for i in train_idx])
        out[held_idx] = scorer.score([calib[i] for i in held_idx])
    return out


def _target_shares(factory: ScorerFactory, calib: list[LabeledQuery], seed: int,
                   settings: EvalSettings) -> dict[str, float]:
    """The share of large calls each target asks for, chosen on the calibration part only
    (out-of-fold scores, so the choice is not made on scores of data the model saw)."""
    cv = cv_scores(factory, calib, seed)
    small, large = _arrays(calib)
    share_for_quality = routing_curve(cv, small, large).share_for_quality(
        settings.quality_target * float(large.mean()))
    return {
        f"large_share={settings.target_share:g}": settings.target_share,
        f"quality={settings.quality_target:g}xlarge": share_for_quality,
    }


def _summary(curve: Curve, settings: EvalSettings) -> dict[str, float]:
    return {
        "apgr": curve.apgr,
        "cpt50": curve.cpt(0.5),
        "cpt80": curve.cpt(0.8),
        "quality_at_target_share": curve.quality_at(settings.target_share),
        "share_for_quality_target": curve.share_for_quality(
            settings.quality_target * curve.large_quality),
    }


def _bootstrap(scores: np.ndarray, small: np.ndarray, large: np.ndarray, rng: np.random.Generator,
               settings: EvalSettings, into: dict[str, list[float]]) -> None:
    n = len(scores)
    for _ in range(settings.bootstrap):
        idx = rng.integers(0, n, n)
        for key, value in _summary(routing_curve(scores[idx], small[idx], large[idx]),
                                   settings).items():
            into.setdefault(key, []).append(value)


def evaluate(queries: list[LabeledQuery], factories: dict[str, ScorerFactory],
             settings: EvalSettings, progress: Callable[[str], None] = lambda _: None
             ) -> dict:
    has_answers = all(q.small_answer for q in queries)
    results: dict[str, ScorerResult] = {}
    baselines: dict[str, list[Curve]] = {"random": [], "oracle": []}
    for seed in range(settings.seeds):
        calib, test = train_test_split(queries, test_size=settings.test_fraction,
                                       random_state=seed, stratify=strata(queries))
        small, large = _arrays(test)
        baselines["random"].append(random_curve(small, large))
        baselines["oracle"].append(oracle_curve(small, large))
        rng = np.random.default_rng(seed)
        for name, factory in factories.items():
            probe = factory()
            if probe.needs_answer and not has_answers:
                continue
            progress(f"seed {seed + 1}/{settings.seeds}: {name}")
            res = results.setdefault(name, ScorerResult(name, cascade=probe.needs_answer))
            fitted = probe.fit(calib)
            scores, calib_scores = fitted.score(test), fitted.score(calib)
            res.curves.append(routing_curve(scores, small, large))
            _bootstrap(scores, small, large, rng, settings, res.boot)
            for target, share in _target_shares(factory, calib, seed, settings).items():
                # the fitted model's threshold that escalates this share of the calibration
                # part (raw out-of-fold thresholds do not transfer: see router.calibrate)
                threshold = threshold_for_share(calib_scores, share)
                escalate = scores < threshold
                share = float(escalate.mean())
                quality = float(np.where(escalate, large, small).mean())
                res.calibrated.setdefault(target, []).append({
                    "threshold": threshold, "share_large": share, "quality": quality,
                    "quality_vs_large": quality / float(large.mean()),
                    "relative_cost": relative_cost(share, settings.price_ratio, res.cascade),
                })
    return _report(results, baselines, settings, len(queries))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _report(results: dict[str, ScorerResult], baselines: dict[str, list[Curve]],
            settings: EvalSettings, n: int) -> dict:
    first = baselines["random"]
    report: dict = {
        "settings": settings.__dict__, "n_queries": n,
        "always_small": _mean([c.small_quality for c in first]),
        "always_large": _mean([c.large_quality for c in first]),
        "baselines": {}, "scorers": {}, "curves": {},
    }
    for name, curves in baselines.items():
        report["baselines"][name] = {k: _mean([_summary(c, settings)[k] for c in curves])
                                     for k in _summary(curves[0], settings)}
        report["curves"][name] = np.mean([c.quality for c in curves], axis=0).tolist()
    for name, res in results.items():
        point = {k: _mean([_summary(c, settings)[k] for c in res.curves])
                 for k in _summary(res.curves[0], settings)}
        ci = {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]
              for k, v in res.boot.items()}
        calibrated = {target: {k: _mean([c[k] for c in runs]) for k in runs[0]}
                      for target, runs in res.calibrated.items()}
        report["scorers"][name] = {"kind": "judge (cascade)" if res.cascade else "pre-router",
                                   "point": point, "ci95": ci, "calibrated": calibrated}
        report["curves"][name] = np.mean([c.quality for c in res.curves], axis=0).tolist()
    report["shares"] = first[0].shares.tolist()
    return report
