from pathlib import Path

import pytest

from sluice.errors import ModelNotFound
from sluice.router.static import StaticRouter
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT).catalog


def test_explicit_models_route_to_themselves() -> None:
    router = StaticRouter(CATALOG, "small")
    assert router.decide("large").model == "large"
    assert router.decide("large").route == "large"


def test_auto_says_it_is_fixed_not_cascaded() -> None:
    decision = StaticRouter(CATALOG, "small").decide("auto")
    assert decision.model == "small" and decision.route == "fixed:small"
    assert "cascade not enabled" in StaticRouter(CATALOG, "small").metadata("auto")["note"]


def test_unknown_model_is_404_naming_choices() -> None:
    with pytest.raises(ModelNotFound) as info:
        StaticRouter(CATALOG, "small").decide("gpt-9")
    assert info.value.status == 404 and "small" in info.value.message


def test_demo_models_are_labelled_noise() -> None:
    meta = StaticRouter(CATALOG, "small").metadata("small")
    assert meta["demo"] is True and "noise" in meta["note"]
