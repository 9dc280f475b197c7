"""Embedded model cards and name resolution (fast: no model is loaded)."""

from __future__ import annotations

import pytest

from dellm_p2p.models import DEFAULT_MODEL_NAME, EMBEDDED_MODELS, card_for


def test_cards_by_key_and_announced_name_case_insensitive() -> None:
    smol = card_for("smollm2-135m")
    assert smol is not None and smol.name == DEFAULT_MODEL_NAME and smol.instruct
    gemma = card_for("gemma3-270m")
    assert gemma is not None and not gemma.instruct and gemma.license == "Gemma Terms of Use"
    assert card_for("GEMMA-3-270M") is gemma
    assert card_for(DEFAULT_MODEL_NAME.lower()) is smol


@pytest.mark.parametrize("model", [None, "", "llama-7b", "/tmp/some-dir"])
def test_unknown_models_have_no_card(model: str | None) -> None:
    assert card_for(model) is None


def test_every_card_is_keyed_by_its_key_and_names_are_distinct() -> None:
    assert all(key == card.key for key, card in EMBEDDED_MODELS.items())
    assert len({card.name.casefold() for card in EMBEDDED_MODELS.values()}) == len(EMBEDDED_MODELS)
