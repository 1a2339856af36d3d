"""Render an evaluation report: JSON, a markdown table, and the quality-vs-cost plot (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from sluice.router.metrics import relative_cost


def _fmt(value: float, ci: list[float] | None = None, pct: bool = False) -> str:
    scale, unit = (100.0, "%") if pct else (1.0, "")
    text = f"{value * scale:.1f}{unit}" if pct else f"{value:.3f}"
    if ci:
        lo, hi = ci[0] * scale, ci[1] * scale
        text += f" [{lo:.1f}, {hi:.1f}]" if pct else f" [{lo:.3f}, {hi:.3f}]"
    return text


def markdown_table(report: dict) -> str:
    s = report["settings"]
    large = report["always_large"]
    lines = [
        f"Queries: {report['n_queries']}; {s['seeds']} stratified splits, "
        f"{int(s['test_fraction'] * 100)}% held out for test; 95% bootstrap intervals "
        f"({s['bootstrap']} resamples per split). Always-small quality "
        f"{report['always_small']:.3f}, always-large {large:.3f}.",
        "",
        "| router | kind | APGR | CPT(50%) | CPT(80%) | quality at "
        f"{int(s['target_share'] * 100)}% large calls | large calls for "
        f"{int(s['quality_target'] * 100)}% of large quality |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in report["baselines"].items():
        lines.append(f"| {name} | baseline | {_fmt(b['apgr'])} | {_fmt(b['cpt50'], pct=True)} | "
                     f"{_fmt(b['cpt80'], pct=True)} | {_fmt(b['quality_at_target_share'])} | "
                     f"{_fmt(b['share_for_quality_target'], pct=True)} |")
    for name, r in report["scorers"].items():
        p, ci = r["point"], r["ci95"]
        lines.append(
            f"| {name} | {r['kind']} | {_fmt(p['apgr'], ci['apgr'])} | "
            f"{_fmt(p['cpt50'], ci['cpt50'], True)} | {_fmt(p['cpt80'], ci['cpt80'], True)} | "
            f"{_fmt(p['quality_at_target_share'], ci['quality_at_target_share'])} | "
            f"{_fmt(p['share_for_quality_target'], ci['share_for_quality_target'], True)} |")
    lines += ["", ("Operating points chosen on the calibration part only (the target's share "
                   "of large calls from out-of-fold scores, as a threshold on the fitted "
                   "model's scores), applied to the test part:"), "",
              "| router | calibration target | realised large calls | quality | vs large | "
              f"cost vs always-large (price ratio {s['price_ratio']:g}) |",
              "|---|---|---|---|---|---|"]
    for name, r in report["scorers"].items():
        for target, c in r["calibrated"].items():
            lines.append(f"| {name} | {target} | {_fmt(c['share_large'], pct=True)} | "
                         f"{c['quality']:.3f} | {_fmt(c['quality_vs_large'], pct=True)} | "
                         f"{_fmt(c['relative_cost'], pct=True)} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = report["shares"]
    ratio = report["settings"]["price_ratio"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, quality in report["curves"].items():
        style = {"random": ":", "oracle": "--"}.get(name, "-")
        ax1.plot(shares, quality, style, label=name)
        cascade = report["scorers"].get(name, {}).get("kind", "").startswith("judge")
        ax2.plot([relative_cost(f, ratio, cascade) for f in shares], quality, style, label=name)
    for ax in (ax1, ax2):
        ax.axhline(report["always_large"], color="grey", lw=0.8)
        ax.axhline(report["always_small"], color="grey", lw=0.8)
        ax.axhline(report["settings"]["quality_target"] * report["always_large"], color="red",
                   lw=0.8, ls="--", label=f"{report['settings']['quality_target']:.0%} of large")
        ax.set_ylabel("quality on held-out test part")
        ax.legend(fontsize=8)
    ax1.set_xlabel("share of queries answered by the large model")
    ax2.set_xlabel(f"cost relative to always-large (large = {ratio:g}x small)")
    ax1.set_title("quality vs large-model calls")
    ax2.set_title("quality vs cost (a cascade always pays the small call)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(report: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(report)
    (out / "report.md").write_text(table)
    plot(report, out / "quality_vs_cost.png")
    return table
