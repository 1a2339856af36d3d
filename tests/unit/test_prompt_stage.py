"""Prompt templates: the profile's schema of them and the stage that puts one first in a chat
(`x-sluice-prompt`), with the version a rollout picks."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sluice.errors import InvalidRequest, NotFound
from sluice.pipeline.engines import SUBJECT_ATTR
from sluice.pipeline.prompt_stage import HEADER, PATTERN, PromptStage
from sluice.pipeline.request import ParsedRequest, RequestLimits, parsed
from sluice.rollouts import state as ops
from sluice.rollouts.controller import Rollouts
from sluice.schema.platform import Profile
from sluice.schema.prompts import PromptTemplate
from sluice.schema.rollouts import RolloutSettings, RolloutSpec

ROOT = Path(__file__).resolve().parents[2]
PROFILE = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
TEMPLATES = {"support": PromptTemplate(system="You are the support assistant of Acme."),
             "support@v2": PromptTemplate(system="You are Acme's support assistant. Be brief.",
                                          replace=True),
             "legal": PromptTemplate(system="You answer legal questions.", version="2024-05")}
LIMITS = RequestLimits(8, 4096)
MESSAGES = [{"role": "system", "content": "Answer in French."},
            {"role": "developer", "content": "No markdown."},
            {"role": "user", "content": "Where is my parcel?"}]


def request(headers: dict[str, str], endpoint: str = "chat", subject: str = "h:u1"
            ) -> ParsedRequest:
    body = ({"model": "small", "messages": MESSAGES} if endpoint == "chat"
            else {"model": "small", "prompt": "Where is my parcel?"})
    r = parsed(endpoint, body, LIMITS, "req-1", headers)  # type: ignore[arg-type]
    setattr(r.llm, SUBJECT_ATTR, subject)
    return r


def roles_and_text(r: ParsedRequest) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in r.llm.messages]  # type: ignore[union-attr]


def test_the_profile_declares_templates_and_their_versions() -> None:
    profile = Profile.model_validate({**PROFILE, "prompts": {
        "support": {"system": "You help."}, "support@v2": {"system": "You help.",
                                                           "replace": True}}})
    assert profile.prompts["support@v2"].replace
    assert Profile.model_validate(PROFILE).prompts == {}
    for bad, says in (({"support@v2": {"system": "x"}}, "a version of 'support'"),
                      ({"Support": {"system": "x"}}, "pattern"),
                      ({"support": {"system": ""}}, "at least 1"),
                      ({"support": {"system": "x", "role": "user"}}, "Extra inputs")):
        with pytest.raises(ValueError, match=says):
            Profile.model_validate({**PROFILE, "prompts": bad})


def test_a_template_goes_first_and_keeps_the_requests_own_system_messages() -> None:
    stage = PromptStage(TEMPLATES)
    r = request({HEADER: "support"})
    applied = stage.apply(r)
    assert applied is not None and (applied.name, applied.label) == ("support", "v1")
    assert roles_and_text(r) == [("system", "You are the support assistant of Acme."),
                                 *[(m["role"], m["content"]) for m in MESSAGES]]
    assert r.variants == ["prompt:support"] and r.cache_scope.startswith("~prompt:support:")
    assert r.body["messages"] == MESSAGES  # the body as sent is unchanged
    # the bounds read before any count (holds, a hosted model's fit) include the template
    plain = request({})
    assert r.prompt_tokens_bound() >= plain.prompt_tokens_bound() + len(
        "You are the support assistant of Acme.")
    assert r.prompt_tokens_guess() > plain.prompt_tokens_guess()


def test_an_edited_template_does_not_share_the_old_texts_cached_answers() -> None:
    before, after = request({HEADER: "support"}), request({HEADER: "support"})
    PromptStage(TEMPLATES).apply(before)
    edited = {**TEMPLATES, "support": TEMPLATES["support"].model_copy(
        update={"system": "You are Acme's new support assistant."})}
    PromptStage(edited).apply(after)
    assert before.cache_scope != after.cache_scope


def test_a_replacing_template_drops_the_requests_system_and_developer_messages() -> None:
    r = request({HEADER: "support@v2"})  # a version asked for by name
    applied = PromptStage(TEMPLATES).apply(r)
    assert applied is not None and applied.label == "v2"
    assert roles_and_text(r) == [("system", "You are Acme's support assistant. Be brief."),
                                 ("user", "Where is my parcel?")]
    legal = PromptStage(TEMPLATES).apply(request({HEADER: "legal"}))
    assert legal is not None and legal.label == "2024-05"  # a base template's `version`


def test_no_header_no_template() -> None:
    r = request({})
    assert PromptStage(TEMPLATES).apply(r) is None
    assert roles_and_text(r) == [(m["role"], m["content"]) for m in MESSAGES]
    assert r.variants == [] and r.cache_scope == ""


def test_an_unknown_template_is_a_404_and_a_completion_a_400() -> None:
    with pytest.raises(NotFound) as info:
        PromptStage(TEMPLATES).apply(request({HEADER: "sales"}))
    assert info.value.status == 404 and info.value.code == "prompt_not_found"
    assert info.value.param == HEADER and "legal, support, support@v2" in info.value.message
    with pytest.raises(NotFound, match="none on this platform"):
        PromptStage({}).apply(request({HEADER: "support"}))
    with pytest.raises(InvalidRequest, match="apply to chat requests") as bad:
        PromptStage(TEMPLATES).apply(request({HEADER: "support"}, endpoint="completions"))
    assert bad.value.status == 400 and bad.value.param == HEADER


@pytest.mark.parametrize("value", [
    "support", "support@v2", "a", "a.b_c-d", "x" * 64, "x" * 65, "x@" + "y" * 64,
    "x@" + "y" * 65, "", "Support", "support@", "@v2", "support@v2@v3", "-x", "x y",
    "support ", "sup/port", "support@V2"])
def test_the_documented_pattern_is_exactly_what_the_stage_takes(value: str) -> None:
    """A name on the pattern is taken (a 404 when the profile lacks it); anything else is a
    400 naming the header: the API document and the ingress agree."""
    try:
        PromptStage({}).apply(request({HEADER: value}))
        taken = True
    except NotFound:
        taken = True
    except InvalidRequest:
        taken = False
    assert bool(re.search(PATTERN, value)) == taken


def test_a_rollout_of_a_template_picks_the_version_per_user_and_sticks() -> None:
    models = {"prompt:support": ("prompt:support", "v1"),
              "prompt:support@v2": ("prompt:support", "v2")}
    rollouts = Rollouts(RolloutSettings(), None, models, set(models))
    spec = RolloutSpec(model="prompt:support", to="v2", kind="ab", percent=30)
    rollouts.restored({spec.model: ops.begin("prompt-support-v2-x", spec,
                                             "prompt:support", 0.0)})
    stage = PromptStage(TEMPLATES, rollouts)
    got = {}
    for i in range(2000):
        applied = stage.apply(request({HEADER: "support"}, subject=f"h:user-{i}"))
        assert applied is not None
        got[i] = applied.label
    share = Counter(got.values())["v2"] / 2000
    assert abs(share - 0.30) < 0.035
    assert all(stage.apply(request({HEADER: "support"}, subject=f"h:user-{i}")).label  # type: ignore[union-attr]
               == got[i] for i in range(100))
    # a version named by the request is not re-split, and another template is not touched
    pinned = stage.apply(request({HEADER: "support@v2"}, subject="h:user-0"))
    assert pinned is not None and pinned.name == "support@v2"
    assert stage.apply(request({HEADER: "legal"})).name == "legal"  # type: ignore[union-attr]
    # a version the profile no longer has (removed after its rollout): the one asked for
    gone = PromptStage({"support": TEMPLATES["support"]}, rollouts)
    assert {gone.apply(request({HEADER: "support"}, subject=f"h:user-{i}")).name  # type: ignore[union-attr]
            for i in range(50)} == {"support"}
