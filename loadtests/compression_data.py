"""The long-context extractive QA set the compressor is measured on: SQuAD v1.1 dev questions
(`loadtests/data/squad_long.jsonl`, README there), each with a context of at least
`min_words` words: the paragraph the question was asked on and its article's neighbouring
paragraphs, alternately after and before it (the answer is not always at the start)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "squad_long.jsonl"


@dataclass(frozen=True)
class QA:
    id: str
    title: str
    question: str
    context: str
    answers: tuple[str, ...]
    paragraph: str  # the one the question was asked on (a short context)

    def survives(self, text: str) -> bool:
        """Some gold answer is still in `text`, verbatim."""
        return any(a in text for a in self.answers)


def _window(paragraphs: list[str], i: int, min_words: int) -> str:
    low, high, step = i, i + 1, 0

    def words() -> int:
        return sum(len(p.split()) for p in paragraphs[low:high])

    while words() < min_words and (low > 0 or high < len(paragraphs)):
        if (step % 2 == 0 and high < len(paragraphs)) or low == 0:
            high += 1
        else:
            low -= 1
        step += 1
    return "\n\n".join(paragraphs[low:high])


def load(min_words: int = 700, path: Path = DATA) -> list[QA]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        article = json.loads(line)
        paragraphs = article["paragraphs"]
        for q in article["questions"]:
            context = _window(paragraphs, q["paragraph"], min_words)
            answers = tuple(a for a in q["answers"] if a in context)
            if answers and len(context.split()) >= min_words:
                out.append(QA(q["id"], article["title"], q["question"], context, answers,
                              paragraphs[q["paragraph"]]))
    return out
