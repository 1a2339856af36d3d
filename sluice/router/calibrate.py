"""Fit a cascade route's thresholds on labeled data for a stated target, and say how it did.

One stratified split: the calibration part fits the classifiers and (from out-of-fold scores,
so thresholds are not fitted on scores of seen data) the thresholds; the held-out part
measures what the shipped classifiers and thresholds actually achieve. Both numbers go into
the routing config's provenance next to the data file's hash.

Targets: `large_share=S` (share of requests answered by the large model), `quality=Q`
(fraction of the always-large quality), `cost=C` (cost relative to always-large at a price
ratio, best quality within it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import train_test_split

from sluice.router.artifacts import save_scorer
from sluice.router.dataset import LabeledQuery, strata
from sluice.router.evaluate import cv_scores
from sluice.router.features import Embedder
from sluice.router.metrics import threshold_for_share
from sluice.router.scorers import SCORERS
from sluice.schema.artifact_hash import sha256_file

JudgeKind = Literal["learned", "answer-checks"]


@dataclass(frozen=True)
class CalibrationSpec:
    data: Path
    target: str  # "large_share=0.5" | "quality=0.95" | "cost=0.4"
    route: str = "auto"
    small: str = "small"
    large: str = "large"
    judge: JudgeKind | None = "answer-checks"
    pre_router_share: float = 0.0  # share the pre-router sends straight to large (0: none)
    price_ratio: float = 20.0
    test_fraction: float = 0.5
    seed: int = 0

    def parsed_target(self) -> tuple[str, float]:
        kind, _, value = self.target.partition("=")
        if kind not in ("large_share", "quality", "cost") or not value:
            raise ValueError(f"target must be large_share=S, quality=Q or cost=C; got "
                             f"'{self.target}'")
        return kind, float(value)


@dataclass(frozen=True)
class Outcome:
    share_large: float
    quality: float
    quality_vs_large: float
    relative_cost: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def simulate(small: np.ndarray, large: np.ndarray, pre: np.ndarray | None, t_pre: float,
             judge: np.ndarray | None, t_judge: float, price_ratio: float) -> Outcome:
    """What the two-stage cascade does on labeled queries with these scores and thresholds."""
    to_large = pre < t_pre if pre is not None else np.zeros(len(small), bool)
    ran_small = ~to_large
    escalated = (~to_large) & (judge < t_judge) if judge is not None else np.zeros_like(to_large)
    uses_large = to_large | escalated
    quality = float(np.where(uses_large, large, small).mean())
    cost = (ran_small.sum() + uses_large.sum() * price_ratio) / (len(small) * price_ratio)
    return Outcome(float(uses_large.mean()), quality, quality / float(large.mean()), float(cost))


def _arrays(queries: Sequence[LabeledQuery]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([q.small_quality for q in queries]),
            np.array([q.large_quality for q in queries]))


def _pick(candidates: list[tuple[float, Outcome]], kind: str, value: float,
          large_quality: float) -> tuple[float, Outcome]:
    """The threshold whose calibration outcome best meets the target."""
    if kind == "large_share":
        return min(candidates, key=lambda c: abs(c[1].share_large - value))
    if kind == "quality":
        ok = [c for c in candidates if c[1].quality >= value * large_quality - 1e-12]
        return min(ok or candidates[-1:], key=lambda c: c[1].share_large)
    within = [c for c in candidates if c[1].relative_cost <= value + 1e-12]
    return max(within or candidates[:1], key=lambda c: (c[1].quality, -c[1].relative_cost))


def _clip(threshold: float) -> float:
    return float(min(1.0, max(0.0, threshold)))


def _transfer(pre_cv: np.ndarray | None, t_pre: float, judge_cv: np.ndarray | None,
              t_judge: float, final: dict[str, np.ndarray], judge: str | None
              ) -> tuple[float, float]:
    """Carry the chosen shares from the out-of-fold scores to the shipped models' scale.

    Out-of-fold models and the model fitted on the whole calibration part rank queries
    alike but need not agree on absolute probabilities (a strongly regularised fit squeezes
    them together), so a raw threshold would not transfer. The share of each stage's
    escalations does: each threshold becomes the quantile of the shipped model's scores
    on the calibration part that escalates the same share.
    """
    pre_final = final.get("learned-prompt")
    to_large: np.ndarray = np.zeros(len(next(iter(final.values()))), bool)
    t_pre_out = 0.0
    if pre_cv is not None and pre_final is not None:
        t_pre_out = _clip(threshold_for_share(pre_final, float((pre_cv < t_pre).mean())))
        to_large = pre_final < t_pre_out
    if judge is None or judge_cv is None:
        return t_pre_out, 0.0
    kept_cv = ~(pre_cv < t_pre) if pre_cv is not None else np.ones(len(judge_cv), bool)
    share = float((judge_cv[kept_cv] < t_judge).mean()) if kept_cv.any() else 0.0
    return t_pre_out, _clip(threshold_for_share(final[judge][~to_large], share))


def calibrate(queries: list[LabeledQuery], spec: CalibrationSpec, embedder: Embedder,
              artifact_dir: Path, config_dir: Path) -> dict[str, Any]:
    """Fit, pick thresholds, measure held out, save artifacts; return the route's config.

    Artifact paths in the returned config are relative to `config_dir`, where it is written.
    """
    kind, value = spec.parsed_target()
    if spec.judge is None and spec.pre_router_share > 0:
        raise ValueError("without a judge the pre-router threshold comes from the target; "
                         "leave pre_router_share at 0")
    if spec.judge is not None and not all(q.small_answer for q in queries):
        raise ValueError(f"{spec.data} has no small-model responses to fit a judge on; "
                         "calibrate a prompt-only route (no judge) instead")
    use_pre = spec.judge is None or spec.pre_router_share > 0
    calib, test = train_test_split(queries, test_size=spec.test_fraction,
                                   random_state=spec.seed, stratify=strata(queries))
    small_c, large_c = _arrays(calib)
    small_t, large_t = _arrays(test)
    factories = {"learned-prompt": lambda: SCORERS["learned-prompt"](embedder)}
    if spec.judge is not None:
        factories[spec.judge] = lambda: SCORERS[spec.judge](embedder)  # type: ignore[index]
    cv = {name: cv_scores(f, calib, spec.seed) for name, f in factories.items()
          if name != "learned-prompt" or use_pre}
    fitted = {name: factories[name]().fit(calib) for name in cv}
    held = {name: fitted[name].score(test) for name in cv}

    pre_cv = cv.get("learned-prompt")
    judge_cv = cv.get(spec.judge) if spec.judge else None
    if spec.judge is not None:
        t_pre = (threshold_for_share(pre_cv, spec.pre_router_share) if pre_cv is not None
                 else float("-inf"))
        grid = [float("-inf"), *np.unique(judge_cv), float("inf")]  # type: ignore[arg-type]
        cands = [(t, simulate(small_c, large_c, pre_cv, t_pre, judge_cv, t, spec.price_ratio))
                 for t in grid]
        t_judge, calib_outcome = _pick(cands, kind, value, float(large_c.mean()))
    else:
        t_judge = float("nan")
        grid = [float("-inf"), *np.unique(pre_cv), float("inf")]  # type: ignore[arg-type]
        cands = [(t, simulate(small_c, large_c, pre_cv, t, None, 0.0, spec.price_ratio))
                 for t in grid]
        t_pre, calib_outcome = _pick(cands, kind, value, float(large_c.mean()))
    t_pre, t_judge = _transfer(pre_cv, t_pre, judge_cv, t_judge,
                               {n: fitted[n].score(calib) for n in fitted}, spec.judge)
    test_outcome = simulate(small_t, large_t, held.get("learned-prompt"), t_pre,
                            held.get(spec.judge) if spec.judge else None, t_judge,
                            spec.price_ratio)
    provenance = {
        "method": "calibrated", "data": str(spec.data), "data_sha256": sha256_file(spec.data),
        "target": spec.target, "metric": "small/large quality labels of the data file "
        "(correctness or judge score / 10)",
        "split": f"stratified, {1 - spec.test_fraction:.0%} calibration / "
                 f"{spec.test_fraction:.0%} held out, seed {spec.seed}; thresholds from "
                 "5-fold out-of-fold scores on the calibration part",
        "calibration": calib_outcome.as_dict(), "held_out": test_outcome.as_dict(),
    }
    route: dict[str, Any] = {"name": spec.route, "small": spec.small, "large": spec.large}
    artifact_dir.mkdir(parents=True, exist_ok=True)
    for name, scorer in fitted.items():
        path = artifact_dir / f"{spec.route}-{name}.joblib"
        artifact = {"path": os.path.relpath(path.resolve(), config_dir.resolve()),
                    "sha256": save_scorer(name, scorer, path)}
        if name == "learned-prompt":
            route["pre_router"] = {"kind": "learned-prompt", "artifact": artifact,
                                   "threshold": t_pre, "provenance": provenance}
        else:
            route["judge"] = {"kind": name, "artifact": artifact, "threshold": t_judge,
                              "provenance": provenance}
    return route
