"""False hits of the semantic cache on real question pairs, and the threshold that keeps them rare.

A hit on a pair whose texts are *not* paraphrases hands one user another question's answer:
that is the false hit. On labeled pairs this script splits the calibration set in two
(stratified, seeded), picks on one half the lowest similarity threshold whose false-hit rate
stays under the target, and reports on the held-out half: false-hit rate (hits among
non-paraphrases), hit rate on paraphrases, and the share of hits that are wrong, with and
without the guard. The same threshold is then applied to the other sets:

- Quora Question Pairs (real user questions; the calibration set when present): not shipped,
  see loadtests/data/README.md for how to get it; `--qqp PATH`.
- PAWS-Wiki (shipped): adversarial word-order swaps, the hardest case for any embedding.
- GSM8K number swaps: real GSM8K questions with one number changed (the answer changes,
  the wording barely does).

    python -m loadtests.semantic_eval --out bench-results/semantic [--qqp .data/qqp_pairs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from sluice.cache_tier.semantic_cache import guard_conflict
from sluice.router.features import MiniLMEmbedder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_QQP = ROOT / ".data/qqp_pairs.jsonl"
DEFAULT_PAWS = ROOT / "loadtests/data/paws_pairs.jsonl"
DEFAULT_GSM8K = ROOT.parent / "shared/data/routing/gsm8k_pairs.jsonl"
THRESHOLDS = np.round(np.arange(0.70, 1.0001, 0.01), 2)


def load_pairs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def number_swaps(path: Path, limit: int, rng: random.Random) -> list[dict[str, Any]]:
    """Real GSM8K questions with one number changed: never the same question."""
    pairs = []
    for row in load_pairs(path):
        numbers = list(re.finditer(r"\d+", row["prompt"]))
        if not numbers:
            continue
        m = rng.choice(numbers)
        new = str(int(m.group(0)) + rng.randint(1, 9))
        q2 = row["prompt"][:m.start()] + new + row["prompt"][m.end():]
        pairs.append({"q1": row["prompt"], "q2": q2, "duplicate": 0})
        if len(pairs) == limit:
            break
    return pairs


def split(pairs: list[dict[str, Any]], seed: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    cal: list[int] = []
    test: list[int] = []
    for label in (0, 1):
        idx = [i for i, p in enumerate(pairs) if p["duplicate"] == label]
        rng.shuffle(idx)
        cal += idx[: len(idx) // 2]
        test += idx[len(idx) // 2:]
    return cal, test


def outcomes(sims: np.ndarray, labels: np.ndarray, guarded_ok: np.ndarray,
             threshold: float, guard: bool) -> dict[str, float]:
    hit = sims >= threshold
    if guard:
        hit &= guarded_ok
    neg, pos = labels == 0, labels == 1
    hits = int(hit.sum())
    return {
        "threshold": float(threshold),
        "false_hit_rate": float(hit[neg].mean()) if neg.any() else float("nan"),
        "paraphrase_hit_rate": float(hit[pos].mean()) if pos.any() else float("nan"),
        "wrong_share_of_hits": float((hit & neg).sum() / hits) if hits else 0.0,
        "hits": hits,
    }


def pick_threshold(sims: np.ndarray, labels: np.ndarray, ok: np.ndarray, guard: bool,
                   target: float) -> float:
    """Lowest threshold whose false-hit rate is at most the target."""
    for t in THRESHOLDS:
        if outcomes(sims, labels, ok, t, guard)["false_hit_rate"] <= target:
            return float(t)
    return 1.0


def evaluate(pairs: list[dict[str, Any]], sims: np.ndarray, ok: np.ndarray, target: float,
             seed: int) -> dict[str, Any]:
    labels = np.array([p["duplicate"] for p in pairs])
    cal, test = split(pairs, seed)
    result: dict[str, Any] = {"pairs": len(pairs), "paraphrases": int(labels.sum()),
                              "calibration": len(cal), "held_out": len(test)}
    for guard in (False, True):
        name = "guard" if guard else "no_guard"
        t = pick_threshold(sims[cal], labels[cal], ok[cal], guard, target)
        result[name] = {"calibration": outcomes(sims[cal], labels[cal], ok[cal], t, guard),
                        "held_out": outcomes(sims[test], labels[test], ok[test], t, guard),
                        "curve": [outcomes(sims[test], labels[test], ok[test], x, guard)
                                  for x in THRESHOLDS]}
    return result


def plot(result: dict[str, Any], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in (("no_guard", "--"), ("guard", "-")):
        curve = result[name]["curve"]
        xs = [c["threshold"] for c in curve]
        ax.plot(xs, [c["false_hit_rate"] for c in curve], style, color="tab:red",
                label=f"false-hit rate ({name.replace('_', ' ')})")
        ax.plot(xs, [c["paraphrase_hit_rate"] for c in curve], style, color="tab:blue",
                label=f"paraphrase hit rate ({name.replace('_', ' ')})")
    ax.axvline(result["guard"]["calibration"]["threshold"], color="grey", lw=0.8)
    ax.set_xlabel("cosine similarity threshold (MiniLM)")
    ax.set_ylabel("share of held-out pairs")
    ax.set_title(f"Semantic cache, {name} pairs (held-out half)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qqp", type=Path, default=DEFAULT_QQP)
    parser.add_argument("--paws", type=Path, default=DEFAULT_PAWS)
    parser.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K)
    parser.add_argument("--target", type=float, default=0.01,
                        help="Largest false-hit rate allowed on the calibration half.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/semantic"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sets = {}
    if args.qqp.exists():
        sets["qqp"] = load_pairs(args.qqp)
    sets["paws"] = load_pairs(args.paws)
    sets["gsm8k_number_swaps"] = number_swaps(args.gsm8k, 500, random.Random(args.seed))
    calibration_set = next(iter(sets))
    texts = sorted({p[k] for rows in sets.values() for p in rows for k in ("q1", "q2")})
    print(f"embedding {len(texts)} texts with MiniLM ...", flush=True)
    vectors = dict(zip(texts, MiniLMEmbedder(batch_size=64).embed(texts)))

    def score(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        sims = np.array([float(vectors[p["q1"]] @ vectors[p["q2"]]) for p in rows])
        ok = np.array([guard_conflict(p["q1"], p["q2"]) is None for p in rows])
        return sims, ok

    sims, ok = score(sets[calibration_set])
    result = {"calibrated_on": calibration_set, "target_false_hit_rate": args.target,
              calibration_set: evaluate(sets[calibration_set], sims, ok, args.target,
                                        args.seed)}
    for name, rows in sets.items():
        if name == calibration_set:
            continue
        s2, ok2 = score(rows)
        labels = np.array([p["duplicate"] for p in rows])
        result[name] = {"pairs": len(rows), "paraphrases": int(labels.sum()),
                        "median_similarity_non_paraphrase": float(np.median(s2[labels == 0]))}
        for guard in ("no_guard", "guard"):
            t = result[calibration_set][guard]["calibration"]["threshold"]
            result[name][guard] = {"held_out": outcomes(s2, labels, ok2, t, guard == "guard")}
    (args.out / "semantic_eval.json").write_text(json.dumps(result, indent=2))
    plot(result[calibration_set], args.out / "semantic_eval.png", calibration_set)
    for guard in ("no_guard", "guard"):
        t = result[calibration_set][guard]["calibration"]["threshold"]
        print(f"{guard} (threshold {t:.2f}, chosen on half of {calibration_set}):")
        for name in sets:
            held = result[name][guard]["held_out"]
            print(f"  {name:20s} false-hit rate {held['false_hit_rate']:.2%}, paraphrase hit "
                  f"rate {held['paraphrase_hit_rate']:.2%}, wrong share of hits "
                  f"{held['wrong_share_of_hits']:.2%}")
    print(f"wrote {args.out}/semantic_eval.json and semantic_eval.png")


if __name__ == "__main__":
    main()
