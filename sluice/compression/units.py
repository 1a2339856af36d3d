"""A message's text as units a compressor may keep or drop, and the text rebuilt from the
kept ones.

Prose is split into paragraphs (blank lines) and sentences. Whatever is not plain prose is
one protected unit, always kept whole: a fenced code block (```), and a paragraph that looks
like code or structured data (JSON, XML/HTML, a Markdown table, indented lines, CSV-like
rows): a compressor that cannot parse a structure must not cut into it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
PARAGRAPHS = re.compile(r"\n\s*\n")
# after . ! ? (and a closing quote or bracket), before what can start a sentence
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "vs.", "e.g.", "i.e.", "U.S.",
                 "No.", "Jr.", "Sr.", "Inc.", "Ltd.", "Co.", "Gen.", "Gov.", "Sen.", "Rep.")


@dataclass(frozen=True)
class Unit:
    text: str
    paragraph: int  # which paragraph it belongs to (kept units of one join with a space)
    protected: bool = False


def _structured(paragraph: str) -> bool:
    text = paragraph.strip()
    if not text:
        return False
    if text[0] in "{[<":
        return True
    lines = text.splitlines()
    if any(line.count("|") >= 2 for line in lines):
        return True
    if any(line.startswith(("    ", "\t")) for line in paragraph.splitlines()):
        return True
    commas = [line.count(",") for line in lines]
    if len(lines) >= 2 and min(commas) >= 2 and len(set(commas)) == 1:
        return True  # rows of equal width: CSV
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters < 0.6 * len(text)


def sentences(paragraph: str) -> list[str]:
    """Sentences of one prose paragraph (a period after a common abbreviation does not end
    one)."""
    parts: list[str] = []
    for piece in SENTENCE_END.split(paragraph.strip()):
        if parts and parts[-1].endswith(ABBREVIATIONS):
            parts[-1] = f"{parts[-1]} {piece}"
        elif piece:
            parts.append(piece)
    return parts


def split_units(text: str) -> list[Unit]:
    units: list[Unit] = []
    paragraph = 0
    cursor = 0
    blocks: list[tuple[str, bool]] = []
    for fence in FENCE.finditer(text):
        blocks.append((text[cursor:fence.start()], False))
        blocks.append((fence.group(0), True))
        cursor = fence.end()
    blocks.append((text[cursor:], False))
    for block, fenced in blocks:
        if fenced:
            units.append(Unit(block, paragraph, protected=True))
            paragraph += 1
            continue
        for part in PARAGRAPHS.split(block):
            if not part.strip():
                continue
            if _structured(part):
                units.append(Unit(part.strip("\n"), paragraph, protected=True))
            else:
                units.extend(Unit(s, paragraph) for s in sentences(part))
            paragraph += 1
    return units


def join_units(units: Sequence[Unit], keep: Sequence[bool]) -> str:
    """The text of the kept units: a paragraph's sentences joined by a space, paragraphs by
    a blank line, in their original order."""
    paragraphs: dict[int, list[str]] = {}
    for unit, kept in zip(units, keep, strict=True):
        if kept:
            paragraphs.setdefault(unit.paragraph, []).append(unit.text)
    return "\n\n".join(" ".join(parts) for _, parts in sorted(paragraphs.items()))
