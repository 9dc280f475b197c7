"""Adapter directories on disk: layout, metadata, content hash, adoption.

An adapter lives in ``<state_dir>/learn/adapters/<id>/``: ``peft``'s
``adapter_config.json`` and ``adapter_model.safetensors`` plus
``dellm-adapter.json`` (:class:`AdapterMeta`). Its id is ``lora-`` and the
first 12 hex digits of the SHA-256 of its weights file, so one adapter has
one name everywhere it is served (``<base>:<id>``). The records held back
from its training (the guard's test set) stay beside it in
``<state_dir>/learn/heldout/<id>.jsonl``, never inside it, so sharing an
adapter never shares a question. ``<state_dir>/learn/adopted.json`` names
the adapter the node serves (``learn_serve``), written only after the guard
passed (:mod:`.guard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

META_FILE = "dellm-adapter.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, META_FILE)  # what an adapter is made of, and all that is shared
ADOPTED_FILE = "adopted.json"


class AdapterError(RuntimeError):
    """An adapter cannot be read, trusted or used (one-line reason in ``str``)."""


class AdapterMeta(BaseModel):
    """What ``dellm-adapter.json`` says about an adapter.

    Attributes:
        id: ``lora-<12 hex>`` (from the weights' SHA-256).
        version: 1 for the first adapter trained for this base model in this state directory, then 2, ….
        base_model: the base model's announced name (``SmolLM2-135M-Instruct``).
        base_hash: SHA-256 of the base model's weights and config (:func:`model_hash`).
        rank, alpha: LoRA rank and scaling numerator.
        target_modules: the projections adapted.
        examples: records trained on; held_back: records kept for the guard.
        min_agreement: the bar a non-program record passed (share of answers backing the winner).
        epochs, learning_rate, batch_size, threads: how it was trained (threads: the core budget).
        loss_curve: mean training loss per step (cross-entropy per answer token [nats]).
        seconds: training wall time [s]; bytes: the adapter's files together [bytes].
        created: when it was written [s since the epoch]; trainer: node id of the trainer, if known.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=r"^lora-[0-9a-f]{12}$")
    version: int = Field(ge=1)
    base_model: str
    base_hash: str
    rank: int
    alpha: float
    target_modules: list[str]
    examples: int
    held_back: int = 0
    min_agreement: float = 0.0
    epochs: float = 0.0
    learning_rate: float = 0.0
    batch_size: int = 0
    threads: int = 1
    loss_curve: list[float] = Field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0
    created: float = 0.0
    trainer: str | None = None


def learn_dir(state_dir: Path) -> Path:
    """``<state_dir>/learn``: records, adapters, held-back sets, guard log, adoption."""
    return Path(state_dir).expanduser() / "learn"


def adapters_dir(state_dir: Path) -> Path:
    return learn_dir(state_dir) / "adapters"


def heldout_path(state_dir: Path, adapter_id: str) -> Path:
    return learn_dir(state_dir) / "heldout" / f"{adapter_id}.jsonl"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hash(model_dir: Path) -> str:
    """SHA-256 over a model directory's ``config.json`` and ``*.safetensors`` (sorted by name, name then content).

    Two nodes serving the same converted default model get the same hash, so
    an adapter is only ever put on the base it was trained for.

    Raises:
        AdapterError: no weights in the directory.
    """
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.name == "config.json" or p.suffix == ".safetensors")
    if not any(p.suffix == ".safetensors" for p in files):
        raise AdapterError(f"{model_dir} holds no *.safetensors weights")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def adapter_id_for(weights: Path) -> str:
    return "lora-" + sha256_file(weights)[:12]


def read_meta(adapter: Path) -> AdapterMeta:
    """The metadata of the adapter directory ``adapter``. Raises :class:`AdapterError`."""
    try:
        return AdapterMeta.model_validate_json((Path(adapter) / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{adapter} is not a dellm adapter ({META_FILE}: {exc})") from None


def check_adapter_dir(adapter: Path) -> AdapterMeta:
    """Metadata of ``adapter`` after checking its files are there and its id matches its weights.

    Raises:
        AdapterError: a file is missing, or the weights do not hash to the id.
    """
    adapter = Path(adapter)
    for name in ADAPTER_FILES:
        if not (adapter / name).is_file():
            raise AdapterError(f"{adapter} lacks {name}")
    meta = read_meta(adapter)
    actual = adapter_id_for(adapter / WEIGHTS_FILE)
    if actual != meta.id:
        raise AdapterError(f"{adapter}: the weights hash to {actual}, not to the id {meta.id}")
    return meta


def list_adapters(state_dir: Path) -> list[AdapterMeta]:
    """Adapters in a state directory, oldest first (unreadable ones skipped)."""
    root = adapters_dir(state_dir)
    out = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            out.append(read_meta(path))
        except AdapterError:
            continue
    return sorted(out, key=lambda m: m.created)


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def adopt(state_dir: Path, meta: AdapterMeta) -> Path:
    """Name ``meta``'s adapter as the one this node serves; returns ``adopted.json``'s path."""
    path = learn_dir(state_dir) / ADOPTED_FILE
    write_json_atomic(path, {"id": meta.id, "base_model": meta.base_model, "base_hash": meta.base_hash})
    return path


def adopted(state_dir: Path, base_model: str) -> tuple[Path, AdapterMeta] | None:
    """The adopted adapter for ``base_model`` (its directory and metadata), or ``None``.

    Raises:
        AdapterError: ``adopted.json`` names an adapter that is missing or damaged.
    """
    path = learn_dir(state_dir) / ADOPTED_FILE
    if not path.is_file():
        return None
    try:
        chosen = json.loads(path.read_text())
        adapter_id = str(chosen["id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"{path} is damaged ({exc})") from None
    if chosen.get("base_model") != base_model:
        return None
    directory = adapters_dir(state_dir) / adapter_id
    return directory, check_adapter_dir(directory)
