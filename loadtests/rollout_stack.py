"""The stack rollouts are tried on (`tests/integration/test_rollouts_live.py`,
`loadtests.rollout_bench`): `small` and three variants of it, one healthy (`small@v2`, the
same weights), one whose replica fails half its requests (`small@v3`) and one that answers
1.5 s late (`small@v4`), as the profile's injected faults, and one that speculates by
prompt lookup (`small@ngram`, the same weights; asked for by name); a `large` on the small weights
(the catalog needs a large tier). A cascade route `auto` (small, whose judge accepts every
answer) and its version `auto@v2` (whose judge escalates every request to large), and a
prompt template `support` with its version `support@v2`. No response or semantic cache:
every request reaches a variant; no prefix cache: the same greedy request gets the same
answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FAILING, SLOW, SPECULATIVE = "v3", "v4", "ngram"
ERROR_FRACTION, DELAY_S = 0.5, 1.5


def write_profile(tmp: Path, rollouts: dict[str, Any]) -> Path:
    small = {"source": str(ROOT / "models/demo/small"), "tier": "small",
             "context_length": 2048, "demo": True,
             "pricing": {"mode": "tokens", "tokens": {"input_per_1m": 0.1,
                                                      "output_per_1m": 0.2}}}
    catalog = {"models": [
        {"name": "small", **small},
        {"name": "small@v2", **small, "description": "the same weights: a healthy version"},
        {"name": f"small@{FAILING}", **small, "description": "fails half its requests"},
        {"name": f"small@{SLOW}", **small, "description": "answers 1.5 s late"},
        {"name": f"small@{SPECULATIVE}", **small, "description": "speculative decoding"},
        {"name": "large", **small, "tier": "large"}]}
    (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["catalog"] = str(tmp / "catalog.yaml")
    manual = {"method": "manual", "reason": "a live test's two versions"}
    routes = [{"name": "auto", "small": "small", "large": "large",
               "judge": {"kind": "logprob", "threshold": 0.0, "provenance": manual}},
              {"name": "auto@v2", "small": "small", "large": "large",
               "judge": {"kind": "logprob", "threshold": 1.0, "provenance": manual}}]
    (tmp / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}))
    profile["routing"] = str(tmp / "routes.yaml")
    profile["prompts"] = {
        "support": {"system": "You answer parcel questions."},
        "support@v2": {"system": "You are the support desk of a parcel company. Answer in "
                                 "one sentence and always repeat the order number you were "
                                 "given, so the customer can check it.", "replace": True}}
    one = {"min_replicas": 1, "max_replicas": 1}
    profile["models"] = {
        "small": one, "small@v2": one, "large": one,
        f"small@{FAILING}": {**one, "faults": {"error_fraction": ERROR_FRACTION}},
        f"small@{SLOW}": {**one, "faults": {"delay_s": DELAY_S}},
        f"small@{SPECULATIVE}": {**one, "speculative": {"method": "ngram",
                                                        "num_speculative_tokens": 3}}}
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {"enabled": False}
    profile["rollouts"] = rollouts
    profile["engine_kwargs"]["max_num_seqs"] = 8
    # every answer computed from scratch: a prompt served from the prefix cache takes
    # another numerical path, and the demo models' random weights have near-ties that it
    # can flip, so a greedy answer would not always equal the same request's earlier one
    profile["engine_kwargs"]["enable_prefix_caching"] = False
    # six engines in `sluice serve`'s 4 logical CPUs (the CPUs are not what limits them)
    profile["placement_bundles"] = [{"CPU": 0.5}]
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path
