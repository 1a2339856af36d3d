import json
from pathlib import Path

import pytest

from sluice.router.dataset import DatasetError, load_pairs
from sluice.router.features import answer_features, arithmetic_checks, final_answer, safe_eval


def test_safe_eval_does_arithmetic_only() -> None:
    assert safe_eval("3*60") == 180
    assert safe_eval("1,200 / 4") == 300
    assert safe_eval("__import__('os')") is None
    assert safe_eval("2**10") is None  # powers are not calculator steps here
    assert safe_eval("1/0") is None


def test_arithmetic_checks_count_wrong_steps() -> None:
    assert arithmetic_checks("3 x 60 = <<3*60=180>>180 then <<180*3=540>>540") == (2, 0)
    checked, wrong = arithmetic_checks("so <<12*4=46>>46 and 5 + 5 = 10")
    assert (checked, wrong) == (2, 1)


def test_final_answer_prefers_the_marked_number() -> None:
    assert final_answer("we get 12 then 14\n#### 1,300") == 1300
    assert final_answer("the answer is $42.50.") == 42.5
    assert final_answer("no numbers") is None
    assert final_answer("first 3 then 7") == 7


def test_answer_features_flag_unused_prompt_numbers_and_fractional_finals() -> None:
    good = answer_features("He has 3 apples and buys 4.", "3 + 4 = <<3+4=7>>7\n#### 7")
    bad = answer_features("He has 3 apples and buys 4.", "He has 3 apples, so 3.5\n#### 3.5")
    names = ["log_words", "checked", "wrong", "any_wrong", "wrong_frac", "has_final",
             "log_numbers", "coverage", "no_final", "fractional", "negative", "final_mismatch",
             "log_prompt_numbers"]
    g, b = dict(zip(names, good)), dict(zip(names, bad))
    assert g["coverage"] == 1.0 and b["coverage"] == 0.5
    assert g["fractional"] == 0.0 and b["fractional"] == 1.0


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_load_pairs_reads_both_schemas(tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"q{i}", "weak_response": "a", "weak_correct": i % 2 == 0,
             "strong_correct": True} for i in range(20)]
    queries = load_pairs(_write(tmp_path, rows))
    assert queries[0].small_quality == 1.0 and queries[1].small_quality == 0.0
    scored = [{"id": i, "turns": [f"t{i}", "t2"], "weak_score_turn1": 7,
               "strong_score_turn1": 9} for i in range(20)]
    q = load_pairs(_write(tmp_path, scored))[0]
    assert (q.prompt, q.small_answer, q.large_quality) == ("t0", None, 0.9)
    assert not q.small_is_enough


def test_load_pairs_rejects_files_without_labels(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="weak_correct"):
        load_pairs(_write(tmp_path, [{"prompt": "x"}] * 20))
