"""Fit a LoRA adapter with ``peft`` on CPU from the consensus records that pass a bar.

Self-training on self-consistent answers (Huang et al. 2022, "Large Language
Models Can Self-Improve"): the swarm's voted answers become (prompt, reply)
pairs for one base model. A record passes the bar when a program computed its
answer (program-aided MATH) or when at least ``min_agreement`` of its answers
backed the winner. The target reply is the voted answer itself for a
program-computed record (the model learns to say ``143``, not to write an
expression) and the winning reply otherwise. Loss is on the reply tokens
only, with the base model's own chat template, so what is learnt is what the
node is asked in serving.

Runs in the calling process (``dellm learn train`` is its own process) with
``threads`` CPU threads (``torch.set_num_threads``): a core budget that leaves
the node's vLLM worker its core.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .adapters import (
    META_FILE,
    WEIGHTS_FILE,
    AdapterMeta,
    adapter_id_for,
    adapters_dir,
    heldout_path,
    list_adapters,
    model_hash,
)
from .records import ConsensusRecord

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainError(RuntimeError):
    """Training cannot run (too few records, a bad base model; one-line reason in ``str``)."""


@dataclass(frozen=True)
class TrainSettings:
    """How an adapter is trained.

    Attributes:
        rank, alpha, dropout: LoRA rank, scaling numerator, dropout.
        epochs: passes over the training records.
        learning_rate: AdamW's learning rate (constant after a 5 % warm-up).
        batch_size: examples per step.
        holdout: share of passing records kept back for the guard, in [0, 1).
        min_agreement: bar for records no program computed (share of answers backing the winner).
        max_examples: the newest passing records used at most.
        threads: CPU threads (the core budget).
        seed: shuffling and held-back split.
        max_tokens: longest example [tokens]; longer ones are skipped.
        max_steps: stop after this many steps (``None``: the epochs decide).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    epochs: float = 3.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    holdout: float = 0.2
    min_agreement: float = 0.8
    max_examples: int = 5_000
    threads: int = 1
    seed: int = 0
    max_tokens: int = 256
    max_steps: int | None = None


def passes(record: ConsensusRecord, min_agreement: float) -> bool:
    """Whether a record is trusted enough to train on (program-computed, or agreement ≥ the bar)."""
    return record.program or record.agreement >= min_agreement


def target_reply(record: ConsensusRecord) -> str:
    """What the model should answer to ``record.prompt``: the computed value, else the winning reply."""
    return record.answer if record.program else (record.reply or record.answer)


def select(records: Iterable[ConsensusRecord], settings: TrainSettings) -> list[ConsensusRecord]:
    """Records passing the bar, one per prompt (the newest), at most ``max_examples`` (the newest)."""
    latest: dict[str, ConsensusRecord] = {}
    for record in records:
        if passes(record, settings.min_agreement) and target_reply(record).strip():
            latest.pop(record.prompt, None)
            latest[record.prompt] = record
    return list(latest.values())[-settings.max_examples :]


def split(records: Sequence[ConsensusRecord], holdout: float, seed: int = 0):
    """``(train, held_back)``: each record goes to held-back by a hash of its prompt (stable across runs)."""
    train, held = [], []
    for record in records:
        digest = hashlib.sha256(f"{seed}\0{record.prompt}".encode()).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < holdout else train).append(record)
    return train, held


def _encode(tokenizer, record: ConsensusRecord, max_tokens: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels (-100 on the prompt) of one example, with the model's chat template."""
    user = [{"role": "user", "content": record.prompt}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": target_reply(record)}], tokenize=False
    )
    if not full.startswith(prompt):  # a template that rewrites the prompt once answered: keep its whole text
        prompt = ""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if len(ids) > max_tokens or len(ids) <= len(prompt_ids):
        return None
    return ids, [-100] * len(prompt_ids) + ids[len(prompt_ids) :]


def train_adapter(
    records: Iterable[ConsensusRecord],
    base_dir: Path,
    base_name: str,
    state_dir: Path,
    settings: TrainSettings = TrainSettings(),
    *,
    trainer: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Path, AdapterMeta]:
    """Train one adapter and write it to ``<state_dir>/learn/adapters/<id>/``.

    Args:
        records: consensus records (any order); those passing the bar are used.
        base_dir: the base model's Hugging Face directory.
        base_name: its announced name (kept in the metadata; the node serves
            the adapter only on a model of that name and hash).
        state_dir: the node's state directory.
        settings: see :class:`TrainSettings`.
        trainer: the trainer's node id, for the metadata.
        progress: called after each step with (step, steps, loss).

    Returns:
        The adapter directory and its metadata (loss curve, seconds, bytes, …).

    Raises:
        TrainError: fewer than 4 records pass the bar, or the base model cannot be loaded.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chosen = select(records, settings)
    train, held = split(chosen, settings.holdout, settings.seed)
    if len(train) < 4:
        raise TrainError(
            f"{len(train)} record(s) to train on: at least 4 must pass the bar "
            f"(program-computed, or agreement >= {settings.min_agreement:g})"
        )
    started = time.perf_counter()
    torch.set_num_threads(max(1, settings.threads))
    torch.manual_seed(settings.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load the base model {base_dir}: {exc}") from None
    base_hash = model_hash(Path(base_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    examples = [e for r in train if (e := _encode(tokenizer, r, settings.max_tokens)) is not None]
    if len(examples) < 4:
        raise TrainError(f"only {len(examples)} example(s) fit {settings.max_tokens} tokens")
    lora = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=TARGET_MODULES, task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(model, lora)
    model.train()
    per_epoch = math.ceil(len(examples) / settings.batch_size)
    steps = max(1, math.ceil(per_epoch * settings.epochs))
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    rng = random.Random(settings.seed)
    order: list[int] = []
    losses: list[float] = []
    for step in range(steps):
        batch = []
        while len(batch) < settings.batch_size:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(round(float(loss.detach()), 5))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    return _save(model, chosen, train, held, losses, base_name, base_hash, state_dir, settings, trainer, started)


def _save(model, chosen, train, held, losses, base_name, base_hash, state_dir, settings, trainer, started):
    """Write the adapter under a temporary name, then rename it to its id; the held-back records beside it."""
    root = adapters_dir(Path(state_dir))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=root))
    try:
        model.save_pretrained(tmp)
        adapter_id = adapter_id_for(tmp / WEIGHTS_FILE)
        version = 1 + sum(1 for m in list_adapters(Path(state_dir)) if m.base_model == base_name)
        meta = AdapterMeta(
            id=adapter_id, version=version, base_model=base_name, base_hash=base_hash, rank=settings.rank,
            alpha=settings.alpha, target_modules=TARGET_MODULES, examples=len(train), held_back=len(held),
            min_agreement=settings.min_agreement, epochs=settings.epochs, learning_rate=settings.learning_rate,
            batch_size=settings.batch_size, threads=settings.threads, loss_curve=losses,
            seconds=round(time.perf_counter() - started, 2), bytes=0, created=time.time(), trainer=trainer,
        )  # fmt: skip
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=2))
        for extra in tmp.iterdir():  # peft writes a README; an adapter is its three files
            if extra.name not in ("adapter_config.json", WEIGHTS_FILE, META_FILE):
                extra.unlink()
        size = sum(p.stat().st_size for p in tmp.iterdir())
        meta = meta.model_copy(update={"bytes": size})
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=2))
        target = root / adapter_id
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    held_file = heldout_path(Path(state_dir), adapter_id)
    held_file.parent.mkdir(parents=True, exist_ok=True)
    held_file.write_text("".join(r.model_dump_json() + "\n" for r in held))
    return target, meta
