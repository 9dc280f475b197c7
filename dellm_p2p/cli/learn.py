"""``dellm learn``: export consensus records, train an adapter, guard it, fetch one from a peer, show status.

All of it works on one node's state directory (``--state-dir``; default the
state directory of a node named after this host, as ``dellm-node`` uses):
records in ``learn/records.jsonl``, adapters in ``learn/adapters/<id>/``,
guard decisions in ``learn/guard.jsonl``, the adopted adapter in
``learn/adopted.json``. A running node serves the adopted adapter from its
next start (``learn_serve``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console()


def _default_state_dir() -> Path:
    from ..config import NodeConfig

    return NodeConfig().resolved_state_dir


_state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's state directory (default: that of a node named after this host).",
)


def _fail(message: str, code: int = 1):
    err.print(f"dellm: error: {message}", markup=False)
    sys.exit(code)


def _base(model: str | None) -> tuple[Path, str]:
    """The base model's directory and announced name (``None``: the embedded default, converted if needed)."""
    from ..models import ModelError, resolve_model

    try:
        resolved = resolve_model(model)
    except ModelError as exc:
        _fail(str(exc))
    path = Path(resolved.path)
    if not path.is_dir():
        _fail(f"training needs a local model directory, not {model!r}")
    return path, resolved.name


@click.group()
def learn() -> None:
    """Learn from the swarm's consensus: records, LoRA adapters, the guard, sharing."""


@learn.command()
@_state_option
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="File (default stdout).")
def export(state_dir: Path | None, out_path: Path | None) -> None:
    """Write the consensus records as JSON lines."""
    from ..learn.adapters import learn_dir
    from ..learn.records import RecordStore, export_jsonl

    store = RecordStore(learn_dir(state_dir or _default_state_dir()))
    if out_path is None:
        count = export_jsonl(store.read(), sys.stdout)
    else:
        with open(out_path, "w", encoding="utf-8") as fh:
            count = export_jsonl(store.read(), fh)
    err.print(f"{count} record(s) from {store.path}", markup=False)


@learn.command()
@_state_option
@click.option("--model", default=None, help="Base model directory (default: the embedded default model).")
@click.option("--records", "records_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Train on this JSONL instead of the node's records.")  # fmt: skip
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="CPU threads (core budget).")
@click.option("--epochs", type=click.FloatRange(0, min_open=True), default=3.0, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 512), default=8, show_default=True)
@click.option("--rank", type=click.Choice(["4", "8", "16", "32"]), default="8", show_default=True)
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Bar for records no program computed: share of answers backing the winner.")  # fmt: skip
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many steps.")
@click.option("--guard/--no-guard", default=True, show_default=True, help="Run the guard and adopt if it passes.")
@click.option("--json", "as_json", is_flag=True, help="Print the adapter's metadata (and guard result) as JSON.")
def train(
    state_dir, model, records_path, threads, epochs, learning_rate, batch_size, rank, min_agreement, holdout,
    max_steps, guard, as_json,
) -> None:  # fmt: skip
    """Fit a LoRA adapter on the records that pass the bar (in this process, with --threads cores)."""
    from ..identity import IdentityError, load_identity
    from ..learn.adapters import learn_dir
    from ..learn.records import ConsensusRecord, RecordStore
    from ..learn.train import TrainError, TrainSettings, train_adapter

    state = state_dir or _default_state_dir()
    if records_path is not None:
        try:
            records = [
                ConsensusRecord.model_validate_json(line)
                for line in records_path.read_text().splitlines()
                if line.strip()
            ]
        except ValueError as exc:
            _fail(f"{records_path} is not a JSONL of consensus records: {str(exc).splitlines()[0]}", 2)
    else:
        records = list(RecordStore(learn_dir(state)).read())
    base_dir, base_name = _base(model)
    try:
        trainer = load_identity(state).node_id
    except (IdentityError, OSError):
        trainer = None
    settings = TrainSettings(
        rank=int(rank), alpha=2.0 * int(rank), epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        holdout=holdout, min_agreement=min_agreement, threads=threads, max_steps=max_steps,
    )  # fmt: skip
    with Progress(
        TextColumn("training"), BarColumn(),
        TextColumn("{task.completed}/{task.total} steps, loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("train", total=None, loss="-")

        def progress(step: int, steps: int, loss: float) -> None:
            bar.update(task, completed=step, total=steps, loss=f"{loss:.3f}")

        try:
            path, meta = train_adapter(
                records, base_dir, base_name, state, settings, trainer=trainer, progress=progress
            )
        except TrainError as exc:
            _fail(str(exc))
    err.print(
        f"adapter {meta.id} (v{meta.version}) for {base_name}: {meta.examples} examples, {meta.held_back} held back, "
        f"loss {meta.loss_curve[0]:.3f} -> {meta.loss_curve[-1]:.3f}, {meta.seconds:.0f} s, {meta.bytes / 1e6:.1f} MB",
        markup=False,
    )
    result = _run_guard(state, path, base_dir, threads) if guard else None
    if as_json:
        out.print_json(json.dumps({"adapter": meta.model_dump(), "path": str(path),
                                   "guard": asdict(result) if result else None}))  # fmt: skip


def _run_guard(state: Path, adapter: Path, base_dir: Path, threads: int, source: str = "trained", heldout=None):
    """Guard ``adapter`` on its held-back records (or ``heldout``) and the sanity set; adopt it if it passes."""
    from ..learn.adapters import adopt, check_adapter_dir, heldout_path
    from ..learn.guard import judge, log_result, transformers_generate
    from ..learn.records import ConsensusRecord

    meta = check_adapter_dir(adapter)
    if heldout is None:
        file = heldout_path(state, meta.id)
        lines = file.read_text().splitlines() if file.is_file() else []
        heldout = [ConsensusRecord.model_validate_json(line) for line in lines if line.strip()]
    with err.status(
        f"guard: scoring {meta.id} and the base model on {len(heldout)} held-back records and the sanity set"
    ):
        result = judge(meta.id, heldout, transformers_generate(base_dir, adapter, threads=threads), source=source)
    log_result(state, result)
    if result.adopt:
        adopt(state, meta)
    err.print(f"guard: {result.reason}", markup=False)
    return result


@learn.command(name="guard")
@_state_option
@click.argument("adapter_id", required=False)
@click.option("--model", default=None, help="Base model directory (default: the embedded default model).")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)
def guard_command(state_dir: Path | None, adapter_id: str | None, model: str | None, threads: int) -> None:
    """Score an adapter (default: the newest) against the base; adopt it when it is not worse."""
    from ..learn.adapters import AdapterError, adapters_dir, list_adapters

    state = state_dir or _default_state_dir()
    metas = list_adapters(state)
    if not metas:
        _fail(f"no adapter in {adapters_dir(state)}")
    chosen = adapter_id or metas[-1].id
    base_dir, _ = _base(model)
    try:
        result = _run_guard(state, adapters_dir(state) / chosen, base_dir, threads)
    except AdapterError as exc:
        _fail(str(exc))
    sys.exit(0 if result.adopt else 3)


@learn.command()
@_state_option
@click.option("--json", "as_json", is_flag=True)
def status(state_dir: Path | None, as_json: bool) -> None:
    """Records kept, adapters trained or fetched, guard decisions, the adopted adapter."""
    from ..learn.adapters import ADOPTED_FILE, learn_dir, list_adapters
    from ..learn.guard import guard_log
    from ..learn.records import RecordStore

    state = state_dir or _default_state_dir()
    records = len(RecordStore(learn_dir(state)))
    metas = list_adapters(state)
    decisions = guard_log(state)
    adopted_file = learn_dir(state) / ADOPTED_FILE
    chosen = json.loads(adopted_file.read_text()) if adopted_file.is_file() else None
    if as_json:
        out.print_json(json.dumps({"records": records, "adapters": [m.model_dump() for m in metas],
                                   "guard": [asdict(d) for d in decisions], "adopted": chosen}))  # fmt: skip
        return
    out.print(f"{records} consensus record(s) in {learn_dir(state)}; adopted: {chosen['id'] if chosen else 'none'}")
    table = Table(title="adapters")
    for column in ("id", "v", "base", "examples", "loss", "seconds", "MB", "guard"):
        table.add_column(column)
    last = {d.adapter_id: d for d in decisions}
    for m in metas:
        d = last.get(m.id)
        verdict = "-" if d is None else ("adopt" if d.adopt else "refuse")
        if d is not None:
            verdict += f" held {d.base_heldout:.0%}->{d.adapter_heldout:.0%}"
            verdict += f" sanity {d.base_sanity:.0%}->{d.adapter_sanity:.0%}"
        loss = f"{m.loss_curve[0]:.2f}->{m.loss_curve[-1]:.2f}" if m.loss_curve else "-"
        table.add_row(
            m.id,
            str(m.version),
            m.base_model,
            str(m.examples),
            loss,
            f"{m.seconds:.0f}",
            f"{m.bytes / 1e6:.1f}",
            verdict,
        )
    out.print(table)


@learn.command()
@_state_option
@click.option("--peer", required=True, help="ws://host:port of the node that trained the adapter.")
@click.argument("adapter_id", required=False)
@click.option("--model", default=None, help="Base model directory (default: the embedded default model).")
@click.option("--max-mb", type=click.FloatRange(0, min_open=True), default=64.0, show_default=True,
              help="Refuse adapters larger than this [MiB].")  # fmt: skip
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--guard/--no-guard", default=True, show_default=True, help="Guard it and adopt it if it passes.")
def fetch(state_dir, peer, adapter_id, model, max_mb, threads, guard) -> None:
    """Fetch an adapter from a peer (default: the one it serves), check it, guard it on this node's records."""
    import asyncio

    from ..client import PeerClient, PeerError
    from ..learn.adapters import learn_dir, model_hash
    from ..learn.records import RecordStore
    from ..learn.share import ShareError, fetch_adapter
    from ..learn.train import TrainSettings, select

    state = state_dir or _default_state_dir()
    base_dir, _ = _base(model)

    async def go():
        async with await PeerClient.connect(peer) as client:
            wanted = adapter_id
            if wanted is None:
                served = (client.remote.model or "").rpartition(":")[2]
                if not served.startswith("lora-"):
                    raise ShareError(f"{peer} serves no adapter ({client.remote.model}); name one")
                wanted = served
            return await fetch_adapter(client, wanted, state, max_bytes=int(max_mb * 2**20),
                                       base_hash=model_hash(base_dir))  # fmt: skip

    try:
        directory, meta, manifest = asyncio.run(go())
    except (ShareError, PeerError, OSError) as exc:
        _fail(f"adapter refused or not fetched: {exc}")
    err.print(
        f"fetched {meta.id} ({meta.bytes / 1e6:.1f} MB) trained by {manifest['trainer']} from {peer}", markup=False
    )
    if guard:
        # This node's own records (the bar of the adapter's training) are its held-back set.
        own = select(RecordStore(learn_dir(state)).read(), TrainSettings(min_agreement=meta.min_agreement))[-200:]
        result = _run_guard(state, directory, base_dir, threads, source=peer, heldout=own)
        sys.exit(0 if result.adopt else 3)
