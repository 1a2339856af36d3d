"""Prefix affinity balanced against load: the pure decision behind the replica router."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sluice.router.replica_affinity import AffinityTable, block_hashes, prompt_text, rank
from sluice.schema.serving import ReplicaRoutingConfig

CFG = ReplicaRoutingConfig(block_chars=16, imbalance_threshold=2, tier_imbalance_threshold=1)
DOC = "the river mill stood by the weir " * 20  # 660 chars: 41 blocks of 16


def _hashes(text: str) -> list[bytes]:
    return block_hashes(text, CFG.block_chars)


class Router:
    """The table and the ranking, as the Serve router uses them (record the replica taken)."""

    def __init__(self, config: ReplicaRoutingConfig = CFG, tier: bool = False) -> None:
        self.table = AffinityTable(config.max_blocks, config.replicas_per_block)
        self.config, self.tier = config, tier

    def route(self, text: str, loads: dict[str, int]):
        hashes = _hashes(text)
        ranking = rank(loads, hashes, self.table.match(hashes), self.config, self.tier)
        self.table.record(hashes, ranking.order[0])
        return ranking


def test_block_hashes_are_chained_and_only_cover_full_blocks() -> None:
    a, b = _hashes(DOC + "question one?"), _hashes(DOC + "another question")
    assert len(a) == (len(DOC) + 13) // 16
    assert a[:41] == b[:41]  # the shared document
    assert _hashes("x" * 15) == []
    # the same block after a different prefix hashes differently
    assert _hashes("A" * 16 + "B" * 16)[1] != _hashes("C" * 16 + "B" * 16)[1]


def test_chat_messages_hash_with_their_roles() -> None:
    chat = SimpleNamespace(messages=[{"role": "system", "content": DOC},
                                     {"role": "user", "content": [{"type": "text",
                                                                   "text": "hi"}]}])
    text = prompt_text(chat)
    assert text is not None and DOC in text and text.endswith("user\x1fhi\x1e")
    as_user = SimpleNamespace(messages=[{"role": "user", "content": DOC}])
    assert prompt_text(as_user) != text[:len(prompt_text(as_user) or "")]
    assert prompt_text(SimpleNamespace(prompt="abc")) == "abc"
    assert prompt_text(SimpleNamespace(prompt=["ab", "c"])) == "abc"
    assert prompt_text(object()) is None


def test_same_prefix_goes_to_the_same_replica_when_load_is_even() -> None:
    router = Router()
    loads = {"r1": 0, "r2": 0, "r3": 0}
    first = router.route(DOC + "question 0", loads)
    assert first.reason == "least-loaded"
    for i in range(1, 8):
        ranking = router.route(DOC + f"question {i}", loads)
        assert ranking.order[0] == first.order[0]
        assert ranking.reason == "affinity" and ranking.matched_blocks == 41


def test_affinity_holds_within_the_margin_and_spills_beyond_it() -> None:
    router = Router()
    home = router.route(DOC + "q", {"r1": 0, "r2": 0}).order[0]
    other = "r2" if home == "r1" else "r1"
    within = router.route(DOC + "q2", {home: 2, other: 0})
    assert within.order[0] == home and within.reason == "affinity"
    spilled = router.route(DOC + "q3", {home: 3, other: 0})
    assert spilled.order == (other, home) and spilled.reason == "spill"
    # both replicas now hold the prefix: the shorter queue of the two takes it
    assert router.route(DOC + "q4", {home: 1, other: 2}).order[0] == home
    assert router.route(DOC + "q5", {home: 2, other: 1}).order[0] == other


def test_a_hot_prefix_spreads_instead_of_queueing_on_one_replica() -> None:
    router = Router()
    loads = {"r1": 0, "r2": 0, "r3": 0}
    for i in range(30):  # nothing completes: every routed request stays in flight
        loads[router.route(DOC + f"burst {i}", loads).order[0]] += 1
    assert max(loads.values()) - min(loads.values()) <= CFG.imbalance_threshold + 1
    assert all(n > 0 for n in loads.values())


def test_with_the_kv_tier_a_computed_prefix_goes_to_the_least_loaded_replica() -> None:
    router = Router(tier=True)
    home = router.route(DOC + "q", {"r1": 0, "r2": 0}).order[0]
    other = "r2" if home == "r1" else "r1"
    assert router.route(DOC + "q2", {home: 1, other: 0}).order[0] == home  # within 1
    assert router.route(DOC + "q3", {home: 2, other: 0}).order[0] == other
    # without the tier the margin is imbalance_threshold (2 here): the same load keeps it home
    plain = Router()
    home = plain.route(DOC + "q", {"r1": 0, "r2": 0}).order[0]
    other = "r2" if home == "r1" else "r1"
    assert plain.route(DOC + "q2", {home: 2, other: 0}).order[0] == home


def test_new_prefixes_go_to_the_least_loaded_and_ties_agree_across_routers() -> None:
    loads = {"r1": 1, "r2": 0, "r3": 1}
    assert Router().route(DOC, loads).order[0] == "r2"
    even = {"r1": 0, "r2": 0, "r3": 0}
    picks = {Router().route(f"{i} " + DOC, even).order[0] for i in range(40)}
    assert len(picks) == 3  # spread over replicas by rendezvous hashing ...
    for i in range(10):  # ... and two routers with separate memories pick the same one
        assert Router().route(f"{i} " + DOC, even).order == Router().route(
            f"{i} " + DOC, even).order


def test_a_short_shared_opening_is_not_affinity() -> None:
    router = Router(ReplicaRoutingConfig(block_chars=16, min_match_fraction=0.5))
    home = router.route("A" * 32 + "B" * 200, {"r1": 0, "r2": 0}).order[0]
    # 2 of 14 blocks shared: below half, so it is routed as new (by load and its own key)
    ranking = router.route("A" * 32 + "C" * 200, {"r1": 0, "r2": 0} | {home: 1})
    assert ranking.reason == "least-loaded" and ranking.order[0] != home


def test_the_table_is_bounded_and_keeps_recent_replicas() -> None:
    table = AffinityTable(max_blocks=10, replicas_per_block=2)
    hashes = _hashes(DOC)[:8]
    for r in ("r1", "r2", "r3"):
        table.record(hashes, r)
    assert table.match(hashes) == {"r2": 8, "r3": 8}  # r1 was pushed out
    table.record(_hashes("z" * 160), "r1")
    assert len(table) == 10
    assert table.match(hashes) == {}  # the oldest blocks (its first ones) are forgotten


def test_no_replicas_and_no_prompt() -> None:
    assert rank({}, [], {}, CFG, False).order == ()
    ranking = rank({"a": 2, "b": 1}, [], {}, CFG, False)
    assert ranking.order == ("b", "a") and ranking.reason == "least-loaded"


@pytest.mark.parametrize("field,value", [("block_chars", 4), ("policy", "random"),
                                         ("imbalance_threshold", -1)])
def test_config_rejects_nonsense(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        ReplicaRoutingConfig.model_validate({field: value})
