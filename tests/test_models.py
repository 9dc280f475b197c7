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


def _tiny_tokenizer(adds_bos: bool):
    """A four-word tokenizer built in memory (no model files): Gemma's ids for <pad>, <eos>, <bos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "x": 3}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


@pytest.mark.parametrize("adds_bos", [False, True])
def test_bos_check_after_save_and_reload(tmp_path, adds_bos: bool) -> None:
    from transformers import AutoTokenizer

    from dellm_p2p.gguf_convert import ConversionError, check_adds_bos

    _tiny_tokenizer(adds_bos).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    if adds_bos:
        check_adds_bos(reloaded, 2)
    else:
        with pytest.raises(ConversionError, match="does not add <bos>"):
            check_adds_bos(reloaded, 2)
    with pytest.raises(ConversionError, match="BOS id is 2"):
        check_adds_bos(reloaded, 5)


def test_conversion_failing_the_bos_check_is_a_model_error_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    from dellm_p2p import models
    from dellm_p2p.gguf_convert import check_adds_bos

    def fake_gguf(scratch):  # stands in for assembling the real GGUF
        path = scratch / "model.gguf"
        path.write_bytes(b"GGUF")
        return path

    def convert_without_bos(gguf, out, *, bos_token_id):
        # A simulated conversion whose tokenizer forgot <bos>: the real check must reject it.
        (out / "config.json").write_text("{}")
        check_adds_bos(_tiny_tokenizer(adds_bos=False), bos_token_id)

    gemma = models._CONVERSIONS[models.GEMMA_MODEL_KEY]
    monkeypatch.setitem(models._CONVERSIONS, models.GEMMA_MODEL_KEY, gemma.__class__(fake_gguf, 99, 2))
    monkeypatch.setattr(models, "convert_gguf", convert_without_bos)
    with pytest.raises(models.ModelError, match=r"gemma3-270m.*does not add <bos>"):
        models.ensure_embedded_model(models.GEMMA_MODEL_KEY, tmp_path)
    assert not models.embedded_model_ready(models.GEMMA_MODEL_KEY, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".gemma-3-270m-f32-v99.lock"]  # no scratch, no half model


def test_embedded_keys_resolve_to_their_converted_dirs(tmp_path, monkeypatch) -> None:
    from dellm_p2p import models

    calls = []
    monkeypatch.setattr(models, "ensure_embedded_model", lambda key: calls.append(key) or tmp_path / key)
    assert models.resolve_model("Gemma3-270M") == models.ResolvedModel(str(tmp_path / "gemma3-270m"), "gemma-3-270m")
    assert models.resolve_model("smollm2-135m").name == DEFAULT_MODEL_NAME
    assert calls == ["gemma3-270m", "smollm2-135m"]


@pytest.mark.slow
def test_real_gemma_conversion_adds_bos() -> None:
    """Converts Gemma 3 270M into the shared cache when missing (minutes), then checks the saved tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    from dellm_p2p.gguf_convert import check_adds_bos
    from dellm_p2p.models import GEMMA_MODEL_KEY, ensure_embedded_model

    folder = ensure_embedded_model(GEMMA_MODEL_KEY)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    check_adds_bos(tokenizer, 2)
    assert tokenizer("x").input_ids[0] == 2
    assert not getattr(tokenizer, "chat_template", None)  # a base model: prompts are few-shot text
    config = AutoConfig.from_pretrained(str(folder))
    assert config.model_type.startswith("gemma3") and not hasattr(config, "quantization_config")


def test_model_option_accepts_embedded_names_directories_and_cached_ids(tmp_path, monkeypatch) -> None:
    from dellm_p2p.models import check_model_option

    assert check_model_option(" Gemma3-270M ") == "Gemma3-270M"
    assert check_model_option(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "models--org--tiny").mkdir()
    assert check_model_option("org/tiny") == "org/tiny"
    with pytest.raises(ValueError, match=r"unknown model 'org/other'.*smollm2-135m, gemma3-270m"):
        check_model_option("org/other")


def test_node_config_refuses_an_unknown_model() -> None:
    from dellm_p2p.config import ConfigError, load_config

    assert load_config(model="gemma3-270m").model == "gemma3-270m"
    with pytest.raises(ConfigError, match="unknown model 'gema'"):
        load_config(model="gema")
