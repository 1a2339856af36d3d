"""Context overflow decisions (sluice.router.context_fit) on hand-built token counts: a
message costs its words plus 3; the generation prompt costs 2."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.router.context_fit import Candidate, ContextFit, Fit, Overflow, turns
from sluice.schema.context import ContextPolicy

SMALL, LARGE, HUGE = Candidate("small", 100), Candidate("large", 400), Candidate("huge", 1000)


def words(n: int) -> str:
    return " ".join(["w"] * n)


def conversation(*sizes: int, system: int = 5) -> list[dict[str, Any]]:
    """A system message, then alternating user and assistant messages of these sizes."""
    out = [{"role": "system", "content": words(system)}]
    for i, n in enumerate(sizes):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": words(n)})
    return out


def counter(full: list[dict[str, Any]], calls: list[str] | None = None):
    def count(model: str, kept: list[dict[str, Any]] | None) -> int:
        if calls is not None:
            calls.append(model)
        messages = full if kept is None else kept
        return 2 + sum(len(str(m["content"]).split()) + 3 for m in messages)
    return count


DEFAULT = ContextPolicy()
EXACT = ContextPolicy(trim_headroom=0)  # trim only what must go


def decide(messages, policy, settings=DEFAULT, own=SMALL, others=(), max_tokens=None,
           chat=True):
    return ContextFit(counter(messages)).decide(policy, settings, own, list(others),
                                                max_tokens, messages if chat else None)


def test_a_request_that_fits_is_left_alone_and_counted() -> None:
    fit = decide(conversation(10, 10, 10), "reject", max_tokens=20)
    assert isinstance(fit, Fit) and not fit.overflowed and fit.note() is None
    assert (fit.model, fit.prompt_tokens) == ("small", 2 + 8 + 13 * 3)


def test_reject_states_the_limit_and_the_count_in_openai_s_words() -> None:
    over = decide(conversation(60, 30), "reject", max_tokens=20)
    assert isinstance(over, Overflow)
    assert (over.context, over.prompt_tokens, over.max_tokens) == (100, 106, 20)
    assert over.message().startswith(
        "This model's maximum context length is 100 tokens. However, you requested 126 "
        "tokens (106 in the messages, 20 in the completion).")
    # without max_tokens, the answer needs one token (vLLM's rule)
    assert isinstance(decide(conversation(85), "reject"), Fit)  # 2+8+88 = 98 < 100
    over = decide(conversation(87), "reject")  # 100 tokens: no room at all
    assert isinstance(over, Overflow) and "your messages resulted in 100 tokens" in over.message()


def test_route_takes_the_cheapest_model_that_fits_in_the_order_given() -> None:
    messages = conversation(200, 100)
    fit = decide(messages, "route", others=[LARGE, HUGE], max_tokens=50)
    assert isinstance(fit, Fit) and (fit.model, fit.outcome, fit.note()) == (
        "large", "routed", "routed")
    fit = decide(messages, "route", others=[LARGE, HUGE], max_tokens=200)  # 318+200 > 400
    assert isinstance(fit, Fit) and fit.model == "huge"
    assert isinstance(decide(messages, "route", others=[LARGE], max_tokens=200), Overflow)


def test_trim_drops_the_fewest_oldest_turns_and_keeps_system_and_the_latest_turn() -> None:
    messages = conversation(20, 20, 20, 20, 20, 20, 10)  # system, u a u a u a u
    full = counter(messages)("small", None)
    assert full == 2 + 8 + 6 * 23 + 13  # 161
    fit = decide(messages, "trim", EXACT, max_tokens=10)
    assert isinstance(fit, Fit) and fit.outcome == "trimmed" and fit.kept is not None
    kept = [messages[i] for i in fit.kept]
    assert kept[0]["role"] == "system" and kept[-1] is messages[-1]
    assert fit.prompt_tokens + 10 <= 100
    # the fewest: keeping one more turn would not fit
    assert fit.prompt_tokens + 46 + 10 > 100
    assert fit.dropped_messages == len(messages) - len(kept) == 4
    assert fit.dropped_tokens == full - fit.prompt_tokens == 92
    assert fit.note() == "trimmed 4 messages, 92 tokens"


def test_trim_never_cuts_the_latest_user_message_and_refuses_when_that_alone_overflows() -> None:
    messages = conversation(10, 10, 120)  # the latest user message alone is too long
    assert isinstance(decide(messages, "trim", max_tokens=10), Overflow)
    head, groups, tail = turns(messages)
    assert head == [0] and groups == [[1, 2]] and tail == [3]


def test_turns_keep_tool_results_with_the_assistant_that_called_them() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "", "tool_calls": [{}]},
                {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a1"},
                {"role": "developer", "content": "d"}, {"role": "user", "content": "q2"}]
    head, groups, tail = turns(messages)
    assert head == [0, 5] and groups == [[1, 2, 3, 4]] and tail == [6]


def test_max_tokens_is_lowered_only_where_the_policy_allows_it() -> None:
    messages = conversation(60)  # 73 tokens; 27 left
    assert isinstance(decide(messages, "reject", max_tokens=50), Overflow)
    lowering = ContextPolicy(lower_max_tokens=True, min_output_tokens=16)
    fit = decide(messages, "reject", lowering, max_tokens=50)
    assert isinstance(fit, Fit) and (fit.outcome, fit.max_tokens) == ("lowered", 27)
    assert fit.note() == "max_tokens lowered 50->27"
    # never below min_output_tokens
    assert isinstance(decide(conversation(75), "reject", lowering, max_tokens=50), Overflow)


def test_trim_then_lower_when_dropping_every_old_turn_leaves_too_little_room() -> None:
    messages = conversation(20, 20, 40)  # the kept part: 2+8+43 = 53; 47 left
    lowering = ContextPolicy(lower_max_tokens=True)
    fit = decide(messages, "trim", lowering, max_tokens=60)
    assert isinstance(fit, Fit) and fit.outcome == "trimmed+lowered"
    assert (fit.max_tokens, fit.prompt_tokens, fit.dropped_messages) == (47, 53, 2)
    assert isinstance(decide(messages, "trim", max_tokens=60), Overflow)


def test_a_cascade_whose_first_stage_is_too_small_goes_to_the_stage_that_fits() -> None:
    fit = decide(conversation(150), "reject", others=[LARGE], max_tokens=20)
    assert isinstance(fit, Fit) and (fit.model, fit.outcome) == ("large", "routed")


def test_a_completion_prompt_is_never_trimmed() -> None:
    messages = conversation(20, 20, 20, 20, 20)
    assert isinstance(decide(messages, "trim", max_tokens=10, chat=False), Overflow)


@pytest.mark.parametrize("n_turns", [8, 64, 512])
def test_trim_counts_logarithmically_many_times(n_turns: int) -> None:
    messages = conversation(*([5] * (2 * n_turns + 1)))
    calls: list[str] = []
    fit = ContextFit(counter(messages, calls)).decide(
        "trim", ContextPolicy(), Candidate("small", 60), [], 10, messages)
    assert isinstance(fit, Fit) and fit.outcome == "trimmed"
    assert len(calls) <= 3 + n_turns.bit_length()


def test_trim_cuts_a_headroom_more_so_the_next_turns_reuse_the_kept_prefix() -> None:
    messages = conversation(20, 20, 20, 20, 20, 20, 10)  # 161 tokens
    fit = decide(messages, "trim", ContextPolicy(trim_headroom=0.4), max_tokens=10)
    assert isinstance(fit, Fit) and fit.prompt_tokens + 10 <= 60  # 100 less 40%
    assert fit.dropped_messages == 6  # (with no headroom: 4, test above)
    # the next turns grow the kept conversation without another cut
    grown = [messages[i] for i in fit.kept or ()] + [
        {"role": "assistant", "content": words(5)}, {"role": "user", "content": words(5)}]
    again = decide(grown, "trim", ContextPolicy(trim_headroom=0.4), max_tokens=10)
    assert isinstance(again, Fit) and again.outcome == "fits"
    # where the headroom cannot be had, only what must go is cut
    tight = conversation(20, 20, 70)  # the latest turn alone: 2+8+73 = 83 > 60 - 10
    fit = decide(tight, "trim", ContextPolicy(trim_headroom=0.4), max_tokens=10)
    assert isinstance(fit, Fit) and fit.outcome == "trimmed" and fit.prompt_tokens == 83
