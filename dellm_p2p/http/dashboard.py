"""The node's live dashboard: a page at ``/`` and the data behind it, pushed as server-sent events.

Endpoints (added to the API app by :func:`add_dashboard`):

* ``GET /``: the page (static HTML, CSS and JS in ``dellm_p2p/http/static``,
  no build step, no CDN); ``/dashboard/static/*`` its files. Open: the page
  holds no data, and asks for the API key itself when one is set.
* ``GET /dashboard/api/state``: one JSON snapshot (see :meth:`Dashboard.state`).
* ``GET /dashboard/api/events``: ``text/event-stream``; a ``state`` event
  (the snapshot) first, then ``peers``, ``fitness`` and ``question`` events,
  coalesced to one batch per :data:`TICK_S` at most, and a ``:`` comment
  every :data:`KEEPALIVE_S` of silence.

Both data endpoints need ``Authorization: Bearer <key>`` when the API has a
key (401 otherwise); the page reads the stream with ``fetch``, so the key
travels in a header, never in a URL.

What it shows, all in memory and bounded: the peer table (this node
included when it serves a model), the fitness of every peer over time from
the fitness book's applied reward records (:data:`MAX_POINTS` per peer,
:data:`MAX_SERIES` peers), and the last :data:`MAX_QUESTIONS` questions this
node coordinated through the HTTP API (``model: dellm``), recorded live from
the pipeline's events (chunks, peers asked, candidates, votes, rewards,
timings). Nothing runs while nobody watches: the tick task exists only
while a stream is open, each stream has a bounded queue (a stream that
falls behind gets a fresh snapshot instead of the backlog), and a stream
ends when its client disconnects or the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.staticfiles import StaticFiles

from ..coordinator.events import (
    CandidateReady,
    ChunkPlanned,
    ChunkRouted,
    ChunkTrace,
    ChunkVoted,
    Event,
    Final,
    PeerFailed,
    SwarmAnswer,
    SynthesisToken,
)
from ..coordinator.types import Candidate, VoteResult
from ..peer_table import PeerRecord

if TYPE_CHECKING:
    from ..protocol import RewardRecord
    from .gateway import Gateway

STATIC_DIR = Path(__file__).parent / "static"
TICK_S = 0.4  # one batch of live updates per tick at most [s]
KEEPALIVE_S = 15.0  # a comment after this much silence keeps proxies from closing the stream [s]
MAX_QUESTIONS = 20  # questions kept (the newest)
MAX_POINTS = 500  # fitness points kept per peer (the newest)
MAX_SERIES = 256  # peers with a fitness series (the most recently rewarded)
MAX_STREAMS = 32  # open event streams; more get 429
QUEUE_SIZE = 64  # events queued per stream; a fuller stream gets a snapshot instead
MAX_PENDING_POINTS = 2000  # fitness points buffered for one tick; more send a snapshot instead
TEXT_CAP = 4000  # characters kept of a question, reply or answer

# The page may load only its own files and talk only to this node (defence in depth: peers' text
# is rendered with textContent anyway).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _ms(t: float) -> int:
    return int(t * 1000)


def _cap(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= TEXT_CAP else text[: TEXT_CAP - 1] + "…"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


class _Stream:
    """One open event stream: a bounded queue of SSE lines (``None`` ends it)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)


class _QuestionLog:
    """One question as the dashboard shows it, built from the pipeline's events.

    ``to_json()`` shape: ``{"id", "question", "started" [ms since the epoch],
    "status" (running | synthesizing | answered | failed | cancelled),
    "error", "answer", "synthesizer", "synthesizer_name", "total_ms",
    "confidence", "usage", "notes", "synthesis_failures": [[name, reason]],
    "chunks": [chunk]}``; a chunk is ``{"id", "text", "operation",
    "depends_on", "state" (planned | asked | voted), "asked": [{"peer_id",
    "peer", "samples", "greedy"}], "candidates": [{"peer_id", "peer",
    "sample", "greedy", "answer", "expression", "text", "confidence",
    "latency_ms", "first_token_ms", "winner"}], "failures": [[name,
    reason]], "vote": {"strategy", "answer", "winner_peer", "agreement",
    "anchored"} | null, "rewards": [[name, reward]], "elapsed_ms",
    "stragglers_cancelled"}``.
    """

    def __init__(self, qid: str, question: str, name: Any):
        self.id = qid
        self.question = _cap(question)
        self.started = time.time()
        self.status = "running"
        self.error = ""
        self.answer = ""
        self.synthesizer: str | None = None
        self.total_ms: float | None = None
        self.confidence: float | None = None
        self.usage: dict[str, int] = {}
        self.notes: list[str] = []
        self.synthesis_failures: list[list[str]] = []
        self.chunks: dict[str, dict[str, Any]] = {}
        self._name = name  # node id -> display name

    def apply(self, event: Event) -> None:
        """Fold one pipeline event in."""
        match event:
            case ChunkPlanned(chunk=chunk):
                self.chunks[chunk.id] = {
                    "id": chunk.id,
                    "text": _cap(chunk.text),
                    "operation": chunk.operation.value,
                    "depends_on": list(chunk.depends_on),
                    "state": "planned",
                    "asked": [],
                    "candidates": [],
                    "failures": [],
                    "vote": None,
                    "rewards": [],
                    "elapsed_ms": None,
                    "stragglers_cancelled": 0,
                }
            case ChunkRouted(chunk_id=cid, assignments=assignments) if cid in self.chunks:
                chunk = self.chunks[cid]
                chunk["asked"] += [self._asked(a.peer_id, a.samples, a.greedy) for a in assignments]
                chunk["state"] = "asked" if chunk["vote"] is None else chunk["state"]
            case CandidateReady(chunk_id=cid, candidate=candidate) if cid in self.chunks:
                self.chunks[cid]["candidates"].append(self._candidate(candidate))
            case PeerFailed(chunk_id="synthesis", peer_id=peer, reason=reason):
                self.synthesis_failures.append([self._name(peer), reason])
                self.answer = ""  # the next synthesizer starts over
            case PeerFailed(chunk_id=cid, peer_id=peer, reason=reason) if cid in self.chunks:
                self.chunks[cid]["failures"].append([self._name(peer), reason])
            case ChunkVoted(chunk_id=cid, result=result) if cid in self.chunks:
                chunk = self.chunks[cid]
                chunk["vote"] = self._vote(result)
                chunk["state"] = "voted"
                chunk["stragglers_cancelled"] = event.cancelled_stragglers
                self._mark_winner(chunk["candidates"], result.winner)
            case SynthesisToken(peer_id=peer, text=text):
                self.status, self.synthesizer = "synthesizing", peer
                if len(self.answer) < TEXT_CAP:
                    self.answer = _cap(self.answer + text)
            case Final(answer=answer):
                self.finish(answer)

    def finish(self, answer: SwarmAnswer) -> None:
        """Take the final trace (authoritative: rewards and timings are only known here)."""
        self.status = "answered"
        self.answer = _cap(answer.text)
        self.synthesizer = answer.synthesizer
        self.total_ms = round(answer.total_ms, 1)
        self.confidence = round(answer.confidence, 4)
        self.usage = dict(answer.usage)
        self.notes = list(answer.notes)
        self.chunks = {trace.chunk.id: self._chunk(trace) for trace in answer.chunks}

    def _asked(self, peer_id: str, samples: int, greedy: bool) -> dict[str, Any]:
        return {"peer_id": peer_id, "peer": self._name(peer_id), "samples": samples, "greedy": greedy}

    def _candidate(self, c: Candidate) -> dict[str, Any]:
        return {
            "peer_id": c.peer_id,
            "peer": self._name(c.peer_id),
            "sample": c.sample,
            "greedy": c.greedy,
            "answer": _cap(c.display or c.answer or ""),
            "expression": c.expression,
            "text": _cap(c.text),
            "confidence": _round(c.confidence, 4),
            "latency_ms": round(c.latency_ms, 1),
            "first_token_ms": _round(c.first_token_ms, 1),
            "winner": False,
        }

    def _vote(self, v: VoteResult) -> dict[str, Any]:
        winner = v.winner
        return {
            "strategy": v.strategy,
            "answer": _cap((winner.display or winner.answer) if winner is not None else v.answer),
            "winner_peer": self._name(winner.peer_id) if winner is not None else None,
            "agreement": round(v.agreement, 4),
            "anchored": v.anchored,
        }

    @staticmethod
    def _mark_winner(candidates: list[dict[str, Any]], winner: Candidate | None) -> None:
        if winner is None:
            return
        for c in candidates:
            if (c["peer_id"], c["sample"], c["greedy"]) == (winner.peer_id, winner.sample, winner.greedy):
                c["winner"] = True
                return

    def _chunk(self, trace: ChunkTrace) -> dict[str, Any]:
        chunk = trace.chunk
        candidates = [self._candidate(c) for c in trace.candidates]
        if trace.vote is not None:
            self._mark_winner(candidates, trace.vote.winner)
        return {
            "id": chunk.id,
            "text": _cap(chunk.text),
            "operation": chunk.operation.value,
            "depends_on": list(chunk.depends_on),
            "state": "voted" if trace.vote is not None else "asked",
            "asked": [self._asked(a.peer_id, a.samples, a.greedy) for a in trace.assignments],
            "candidates": candidates,
            "failures": [[self._name(peer), reason] for peer, reason in trace.failures],
            "vote": self._vote(trace.vote) if trace.vote is not None else None,
            "rewards": [[self._name(peer), round(r, 3)] for peer, r in trace.rewards.items()],
            "elapsed_ms": round(trace.elapsed_ms, 1),
            "stragglers_cancelled": trace.stragglers_cancelled,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "started": _ms(self.started),
            "status": self.status,
            "error": self.error,
            "answer": self.answer,
            "synthesizer": self.synthesizer,
            "synthesizer_name": self._name(self.synthesizer) if self.synthesizer else None,
            "total_ms": self.total_ms,
            "confidence": self.confidence,
            "usage": self.usage,
            "notes": self.notes,
            "synthesis_failures": self.synthesis_failures,
            "chunks": list(self.chunks.values()),
        }


class Dashboard:
    """What the dashboard shows, kept up to date, and the open event streams.

    Args:
        gateway: the API's network view (peer table, fitness book).
        tick_s: shortest time between two batches of live updates [s].
    """

    def __init__(self, gateway: Gateway, *, tick_s: float = TICK_S):
        self.gateway = gateway
        self.tick_s = tick_s
        self.started = time.time()
        self.questions: deque[_QuestionLog] = deque(maxlen=MAX_QUESTIONS)
        self.series: OrderedDict[str, deque[list[Any]]] = OrderedDict()  # node id -> [t ms, fitness, reward|None]
        self.names: dict[str, str] = {}  # node id -> last known name, for series of forgotten peers
        self.streams: set[_Stream] = set()
        self.closed = False
        self._ticker: asyncio.Task | None = None
        self._points: list[list[Any]] = []  # [node id, t ms, fitness, reward] since the last tick
        self._dirty: dict[str, _QuestionLog] = {}
        self._last_peers: list[dict[str, Any]] | None = None
        self._last_queue: dict[str, Any] | None = None
        self._last_models: list[dict[str, Any]] | None = None
        for record in gateway.table.records():
            self._series(record.node_id, record.fitness)
        gateway.fitness.listeners.append(self._on_reward)

    # The data.

    def name(self, node_id: str) -> str:
        """A node's display name: its announced name, else the start of its id."""
        record = self.gateway.table.get(node_id)
        if record is not None and record.name:
            return record.name
        return self.names.get(node_id) or node_id[:12]

    def _series(self, node_id: str, seed: float) -> deque[list[Any]]:
        series = self.series.get(node_id)
        if series is None:
            series = self.series[node_id] = deque(maxlen=MAX_POINTS)
            series.append([_ms(time.time()), round(seed, 4), None])
            while len(self.series) > MAX_SERIES:
                gone, _ = self.series.popitem(last=False)
                self.names.pop(gone, None)
        return series

    def _on_reward(self, record: RewardRecord, old: float, new: float) -> None:
        """Fitness book listener: one applied reward record is one point of its peer's series."""
        series = self._series(record.node_id, old)
        self.series.move_to_end(record.node_id)
        point = [_ms(time.time()), round(new, 4), round(record.reward, 3)]
        series.append(point)
        if self.streams and len(self._points) <= MAX_PENDING_POINTS:
            self._points.append([record.node_id, *point])

    def peers(self) -> list[dict[str, Any]]:
        """Every known peer (this node included when it serves a model), as the page's rows."""
        table = self.gateway.table
        now = getattr(table, "clock", time.monotonic)()
        rows = []
        for p in table.records():
            if p.node_id not in self.series and len(self.series) < MAX_SERIES:  # rewards alone evict series
                self._series(p.node_id, p.fitness)
            if p.name:
                self.names[p.node_id] = p.name
            rows.append(self._row(p, now))
        rows.sort(key=lambda r: (r["role"] != "self", r["name"], r["node_id"]))
        return rows

    def _row(self, p: PeerRecord, now: float) -> dict[str, Any]:
        role = "self" if p.node_id == self.gateway.node_id else "peer" if p.url else "coordinator"
        return {
            "node_id": p.node_id,
            "name": p.name,
            "model": p.model,
            "state": p.state.value,
            "role": role,
            "rtt_ms": _round(p.rtt_ms, 1),
            "fitness": round(p.fitness, 4),
            "rewards": p.rewards,
            "agreed": p.agreed,
            "in_flight": p.in_flight,
            "capacity": p.capacity,
            # Whole seconds, and only for a peer that is not alive: each value is a live update.
            "silent_s": None if p.state.value == "alive" else int(max(0.0, now - p.last_seen)),
        }

    def node(self) -> dict[str, Any]:
        node_id = self.gateway.node_id
        me = self.gateway.table.get(node_id)
        return {
            "node_id": node_id,
            "name": me.name if me is not None else "",
            "model": me.model if me is not None else None,
            "started": _ms(self.started),
            "now": _ms(time.time()),
            "tick_s": self.tick_s,
        }

    def queue(self) -> dict[str, Any]:
        """The admission queue: ``{queued_questions, queued_chunks, free_slots, answers_in_flight,
        k_used: {k: chunks}, wait_p50_s, wait_max_s}`` (waits [s] of the last 1,000 admitted chunks)."""
        stats = self.gateway.admission.stats()
        stats.pop("admitted", None)
        stats.pop("refused", None)
        return {k: (_round(v, 3) if k.startswith("wait") else v) for k, v in stats.items()}

    def models(self) -> list[dict[str, Any]]:
        """What the swarm learned per (model, chunk kind): ``[{model, kind, agreed, rewards, reliability}]``,
        by kind, best model first (:func:`~dellm_p2p.cli.model_fitness.model_fitness_rows`)."""
        from ..cli.model_fitness import model_fitness_rows
        from ..protocol import ModelFitness

        rows = self.gateway.fitness.model_rows()
        return model_fitness_rows([ModelFitness(model=m, kind=k, agreed=a, rewards=r) for m, k, a, r in rows])

    def state(self) -> dict[str, Any]:
        """The whole picture: ``{"node": {node_id, name, model, started, now, tick_s}, "peers": [row],
        "fitness": {node id: [[t ms, fitness, reward or null]]}, "names": {node id: name},
        "questions": [question, newest first], "queue": {...}, "models": [model fitness row]}``
        (a question as :class:`_QuestionLog`)."""
        peers = self.peers()
        return {
            "node": self.node(),
            "peers": peers,
            "fitness": {node_id: list(points) for node_id, points in self.series.items()},
            "names": {node_id: self.name(node_id) for node_id in self.series},
            "questions": [q.to_json() for q in reversed(self.questions)],
            "queue": self.queue(),
            "models": self.models(),
        }

    # Questions.

    async def track(self, qid: str, question: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass ``events`` (one question's pipeline) through unchanged, recording the question as ``qid``.

        Closing this iterator closes ``events`` (which cancels the question); its errors pass through.
        """
        log = _QuestionLog(qid, question, self.name)
        self.questions.append(log)
        self._touch(log)
        try:
            async for event in events:
                log.apply(event)
                self._touch(log)
                yield event
        except GeneratorExit:
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.status, log.error = "failed", (str(exc).splitlines() or [type(exc).__name__])[0][:500]
            raise
        finally:
            if log.status in ("running", "synthesizing"):
                log.status = "cancelled"
            self._touch(log)
            await events.aclose()  # type: ignore[attr-defined]

    def _touch(self, log: _QuestionLog) -> None:
        if self.streams:
            self._dirty[log.id] = log

    # Streams.

    def full(self) -> bool:
        return len(self.streams) >= MAX_STREAMS

    def open_stream(self) -> _Stream:
        """A new stream, its first event the snapshot; starts the tick task if it is the first."""
        stream = _Stream()
        stream.queue.put_nowait(_sse("state", self.state()))
        self.streams.add(stream)
        if self._ticker is None or self._ticker.done():
            self._last_peers = None
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="dellm-dashboard")
        return stream

    def close_stream(self, stream: _Stream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._points.clear()
            self._dirty.clear()
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    def close(self) -> None:
        """End every open stream (the server is stopping). Idempotent."""
        self.closed = True
        for stream in list(self.streams):
            self._send(stream, None)

    async def _tick(self) -> None:
        """While a stream is open: every ``tick_s``, publish what changed."""
        while self.streams and not self.closed:
            await asyncio.sleep(self.tick_s)
            self.flush()

    def flush(self) -> None:
        """Publish what changed since the last call: peers (if different), new fitness points, touched questions."""
        if not self.streams:
            return
        if len(self._points) > MAX_PENDING_POINTS:  # a reward storm: one snapshot says it all
            self._points.clear()
            self._dirty.clear()
            self._publish(_sse("state", self.state()))
            return
        peers = self.peers()
        if peers != self._last_peers:
            self._last_peers = peers
            self._publish(_sse("peers", {"peers": peers, "names": {p["node_id"]: p["name"] for p in peers}}))
        queue = self.queue()
        if queue != self._last_queue:
            self._last_queue = queue
            self._publish(_sse("queue", queue))
        models = self.models()
        if models != self._last_models:
            self._last_models = models
            self._publish(_sse("models", {"models": models}))
        if self._points:
            points, self._points = self._points, []
            self._publish(_sse("fitness", {"points": points, "now": _ms(time.time())}))
        if self._dirty:
            logs, self._dirty = list(self._dirty.values()), {}
            for log in logs:
                self._publish(_sse("question", log.to_json()))

    def _publish(self, line: str) -> None:
        for stream in list(self.streams):
            self._send(stream, line)

    def _send(self, stream: _Stream, line: str | None) -> None:
        """Queue ``line``; a full queue is emptied for a snapshot (or the end), so it never grows."""
        try:
            stream.queue.put_nowait(line)
        except asyncio.QueueFull:
            while not stream.queue.empty():
                stream.queue.get_nowait()
            stream.queue.put_nowait(_sse("state", self.state()) if line is not None else None)

    async def events(self) -> AsyncIterator[str]:
        """One client's SSE stream: the snapshot, then live updates, until it disconnects or the server stops."""
        stream = self.open_stream()
        try:
            while not self.closed:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        line = await stream.queue.get()
                except TimeoutError:
                    line = ": keepalive\n\n"
                if line is None:
                    return
                yield line
        finally:
            self.close_stream(stream)


def add_dashboard(app: FastAPI, dashboard: Dashboard, authorize: Any, too_many: Any) -> None:
    """Add the page, its files and its data endpoints to ``app``.

    Args:
        authorize: the API's key check (a FastAPI dependency raising 401).
        too_many: ``too_many(message) -> Exception`` raised when :data:`MAX_STREAMS` streams are open (429).
    """
    auth = [Depends(authorize)]
    page_headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=page_headers)

    async def state() -> JSONResponse:
        return JSONResponse(dashboard.state(), headers={"Cache-Control": "no-store"})

    async def events() -> StreamingResponse:
        if dashboard.full():
            raise too_many(f"{len(dashboard.streams)} dashboard streams are open; close a tab and retry")
        # The stream is opened inside the generator, so a response that never starts leaves nothing behind.
        return StreamingResponse(
            dashboard.events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/dashboard/api/state", state, methods=["GET"], dependencies=auth, include_in_schema=False)
    app.add_api_route("/dashboard/api/events", events, methods=["GET"], dependencies=auth, include_in_schema=False)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
