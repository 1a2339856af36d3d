"""The chaos table (Markdown), the results file and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests.chaos.runner import ScenarioResult

COLUMNS = ("scenario", "sent", "ok", "retried", "retriable errors", "other errors",
           "ingress-lost", "hung", "truncated", "recovery s", "ledger delta")


def _recovery(value: float | None) -> str:
    return "not recovered" if value is None else f"{value:.1f}"


def _ledger(result: ScenarioResult) -> str:
    check = result.ledger
    text = f"{check.delta:+d}" if check.delta else "0"
    notes = []
    if check.missing:
        notes.append(f"{len(check.missing)} missing")
    if check.duplicates:
        notes.append(f"{len(check.duplicates)} duplicated")
    if check.extra:
        notes.append(f"{len(check.extra)} extra")
    return f"{text} ({', '.join(notes)})" if notes else text


def row(result: ScenarioResult) -> list[str]:
    c = result.counts
    return [result.name, str(c["sent"]), str(c["ok"]), str(c["retried"]),
            str(c["retriable"]), str(c["other"]), str(c["ingress_lost"]), str(c["hung"]),
            str(c["truncated"]), _recovery(result.recovery_s), _ledger(result)]


def markdown_table(results: list[ScenarioResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


def write_json(results: list[ScenarioResult], meta: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**meta, "table": markdown_table(results),
            "scenarios": [r.as_dict() for r in results]}
    path.write_text(json.dumps(body, indent=1))


def plot(results: list[ScenarioResult], path: Path, title: str) -> None:
    """Success rate (trailing 2 s window) against seconds since the fault, one panel per
    scenario; the fault's steps are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(results))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.8), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        series = [(t, r) for t, r in result.series() if r is not None]
        ax.plot([t for t, _ in series], [r * 100 for _, r in series], lw=1.2)
        for step in result.steps:
            ax.axvline(step["done_s"] - result.fault_at_s, color="0.5", lw=0.8, ls="--")
        c = result.counts
        ax.set_title(f"{result.name}: {result.fault} ({c['ok']}/{c['sent']} ok, "
                     f"recovery {_recovery(result.recovery_s)} s)", fontsize=8, loc="left")
        ax.set_ylim(-5, 105)
        ax.set_ylabel("ok %")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the fault (dashed: fault steps)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
