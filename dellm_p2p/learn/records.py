"""A coordinator's record of the consensus it reached, one JSON line per voted chunk.

Written where a question ends (:func:`dellm_p2p.coordinator.stream.stream_question`'s
``on_answer``), read by ``dellm learn export`` and ``dellm learn train``. A record
holds only what the user asked *on this coordinator* (the chunk's own text, never
the conversation before it, nor the instructions the coordinator wraps it in), and
only chunks that stand on their own: a chunk that uses an earlier chunk's answer
("…, then find accounts paying that much") or quotes earlier turns is not
recorded, since its text alone does not say what it asks.

The file is bounded: once it holds ``max_records * 5 / 4`` lines it is rewritten
with the newest ``max_records`` (an atomic rename), so it never grows past about
``max_records * 1.25`` records (each at most :data:`MAX_TEXT_CHARS` of text).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from ..coordinator.events import SwarmAnswer

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
DEFAULT_MAX_RECORDS = 10_000
MAX_TEXT_CHARS = 2_000  # a chunk's text and its winning reply are cut to this [characters]


class ConsensusRecord(BaseModel):
    """The consensus the swarm reached on one chunk.

    Attributes:
        ts: when the vote was decided [s since the epoch].
        prompt: the chunk's text as the user asked it (≤ :data:`MAX_TEXT_CHARS`).
        kind: the chunk's operation (``MATH``, ``LOOKUP``, …).
        answer: the voted answer as shown (``display``), e.g. ``143`` or ``Paris``.
        key: the vote key of that answer (:func:`dellm_p2p.coordinator.extract.fold`).
        reply: the winning reply's text (≤ :data:`MAX_TEXT_CHARS`); for a
            program-aided answer, the expression the peer wrote.
        agreement: share of the chunk's answers that back the winner, in [0, 1].
        answers: how many answers were voted on.
        program: the answer was computed by the coordinator from an arithmetic
            expression (program-aided MATH), not taken from a model's words.
        anchored: the greedy anchor decided (no strict plurality).
        models: the models that answered (as their peers announced them), sorted.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    ts: float
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    kind: str
    answer: str
    key: str
    reply: str = Field(default="", max_length=MAX_TEXT_CHARS)
    agreement: float = Field(ge=0, le=1)
    answers: int = Field(ge=0)
    program: bool = False
    anchored: bool = False
    models: list[str] = Field(default_factory=list)


def records_from_answer(answer: SwarmAnswer, now: float | None = None) -> list[ConsensusRecord]:
    """The records of one answered question: one per voted, self-contained chunk with an answer."""
    ts = time.time() if now is None else now
    out = []
    for trace in answer.chunks:
        vote, chunk = trace.vote, trace.chunk
        if vote is None or vote.winner is None or vote.answer is None or chunk.depends_on or chunk.context:
            continue
        winner = vote.winner
        models = sorted({c.model or c.peer_id for c in trace.candidates})
        out.append(
            ConsensusRecord(
                ts=ts,
                prompt=chunk.text[:MAX_TEXT_CHARS],
                kind=str(chunk.operation.value),
                answer=(winner.display or vote.answer)[:MAX_TEXT_CHARS],
                key=vote.answer,
                reply=(winner.expression or winner.text).strip()[:MAX_TEXT_CHARS],
                agreement=round(vote.agreement, 4),
                answers=len(trace.candidates),
                program=winner.expression is not None,
                anchored=vote.anchored,
                models=models,
            )
        )
    return out


class RecordStore:
    """The bounded JSONL file of :class:`ConsensusRecord` under a state directory.

    Args:
        directory: where ``records.jsonl`` lives (created on the first write),
            e.g. ``<state_dir>/learn``.
        max_records: records kept (the newest); the file is compacted when it
            holds a quarter more.

    Thread-safe; the async :meth:`record_answer` writes in a worker thread.
    """

    def __init__(self, directory: Path, max_records: int = DEFAULT_MAX_RECORDS):
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.directory = Path(directory)
        self.path = self.directory / RECORDS_FILE
        self.max_records = max_records
        self._lock = threading.Lock()
        self._lines: int | None = None  # lines in the file, counted on first use

    def add(self, records: Iterable[ConsensusRecord]) -> int:
        """Append ``records``; compact when over the bound. Returns how many were written.

        Raises:
            OSError: the directory or file cannot be written.
        """
        lines = [r.model_dump_json() + "\n" for r in records]
        if not lines:
            return 0
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._lines is None:
                self._lines = self._count()
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(lines)
            self._lines += len(lines)
            if self._lines > self.max_records + self.max_records // 4:
                self._compact()
        return len(lines)

    async def record_answer(self, answer: SwarmAnswer) -> None:
        """Record a finished question's chunks (in a worker thread); a write error is logged, never raised."""
        try:
            records = records_from_answer(answer)
            if records:
                await asyncio.to_thread(self.add, records)
        except (OSError, ValidationError) as exc:
            log.warning("cannot record the consensus of %r: %s", answer.question[:60], exc)

    def read(self) -> Iterator[ConsensusRecord]:
        """Every valid record, oldest first (a damaged line is skipped with a log line)."""
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield ConsensusRecord.model_validate_json(line)
                except ValidationError:
                    log.warning("%s:%d is not a consensus record; skipped", self.path, number)

    def __len__(self) -> int:
        with self._lock:
            if self._lines is None:
                self._lines = self._count()
            return self._lines

    def _count(self) -> int:
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())

    def _compact(self) -> None:
        """Keep the newest ``max_records`` lines (atomic: a temporary file renamed over the old one)."""
        with open(self.path, encoding="utf-8") as fh:
            kept = [line for line in fh if line.strip()][-self.max_records :]
        fd, tmp = tempfile.mkstemp(prefix=".records-", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.writelines(kept)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._lines = len(kept)


def export_jsonl(records: Iterable[ConsensusRecord], out) -> int:
    """Write ``records`` as JSON lines to the text stream ``out``; returns how many."""
    count = 0
    for record in records:
        out.write(json.dumps(record.model_dump(), ensure_ascii=False) + "\n")
        count += 1
    return count
