"""Admission: what the swarm cannot take now waits in a fair queue, and redundancy adapts to load.

A coordinator (a :class:`~dellm_p2p.swarm.Swarm`, a node's HTTP gateway)
owns one :class:`Admission` over its peer table. Every question takes a
:class:`Ticket` when it arrives (:class:`QueueFullError` when ``max_queue``
questions already wait for their first slot), and every chunk asks its
ticket for slots before it is routed (:meth:`Ticket.admit`): it waits until
the peers have a free slot, in turn, within the question's own deadline
(the caller's ``asyncio.timeout``), and gets the redundancy k it may use.

Slots. A slot is one answer in flight. A peer announces its ``capacity``
and reports ``in_flight`` in membership gossip; the coordinator knows what
all of its own questions have in flight there, counted in answers (a
request for n samples holds n slots)::

    busy(p) = others(p) + ours(p),   others(p) = max(0, in_flight − our peak there lately)
    free(p) = capacity − busy(p)

``in_flight`` is the peer's last report (an ack to our probe, or relayed by
gossip), which counts our own requests as they were when it was made, up to
:data:`REPORT_AGE_S` ago; our most answers in flight there within that time
bounds what of it was ours, so ``others`` is never over-counted. Adding the
report and our count, as routing alone does, counted ours twice, for as
long as the report was stale: in ``scripts/bench_load.py`` with one
simulated node of 4 slots, one coordinator kept about 2 busy (72 questions
a minute where 4 slots allow 200); noting our count when a report arrived
still left 10 simulated nodes mostly idle (relayed reports are seconds
old). A coordinator that is a node's only client uses all its slots. The node's own record on a gateway
(``source == "self"``) is read live: there ``others = max(0, in_flight −
ours)``. Requests of other coordinators count one slot each whatever their
``n``; a node past its ``max_concurrency`` (in requests, which never exceed
answers) refuses with ``overloaded`` and the pipeline re-routes. Routing
sees the same figure (:meth:`Ticket.load`), so a chunk admitted here finds
a peer that :func:`~.route.eligible_peers` accepts.

Order and fairness. Waiting chunks are served one client key at a time
(an API key or ``user``; ``local`` for the CLI and the Python API): the key
holding the fewest slots now (answers in flight plus reserved) goes first,
and within a key the oldest question first, so a question's later chunks
go ahead of questions that arrived after it. With one key this is arrival
order; with several it shares the slots max-min fairly, the rule of fair
queueing (Demers, Keshav and Shenker 1989, "Analysis and simulation of a
fair queueing algorithm", SIGCOMM) applied to slots held rather than bytes
sent.

Adaptive redundancy (:func:`adaptive_redundancy`). When the free slots
cannot give every queued chunk its k answers, a chunk admitted now gets
``free // queued`` of them, at least 1: with the pipeline's greedy anchor
first (:func:`~.pipeline.with_anchor`), k = 1 is the anchor alone, k = 2
the anchor and one sample, and so on. k grows back as the queue empties;
with no queue and free slots for k answers, nothing changes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import NoPeersError, SwarmError
from .route import eligible_peers

if TYPE_CHECKING:
    from ..peer_table import PeerTable
    from .types import Assignment

LOCAL_KEY = "local"  # the client key of questions that name none (CLI, Python API)
# How old a peer's in_flight report may be [s]: it comes with an ack to our probe (each of N peers every
# N × 0.5 s under SWIM) or relayed by gossip, so at N = 100 it can be most of a minute old.
REPORT_AGE_S = 60.0
POLL_S = 0.25  # how often waiting chunks look at the table again (gossip frees slots too) [s]


class QueueFullError(SwarmError):
    """The admission queue is full; try again after :attr:`retry_after_s` [s] (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def adaptive_redundancy(free_slots: int, queued_chunks: int, wanted: int) -> int:
    """Answers (k) a chunk admitted now may ask for.

    Args:
        free_slots: answers the peers can take now (see the module docstring).
        queued_chunks: chunks waiting for slots, this one included (≥ 1).
        wanted: the question's redundancy (``AskOptions.redundancy``).

    Returns:
        ``min(wanted, free_slots // queued_chunks)``, at least 1: each
        queued chunk gets an equal share of the free slots, and every chunk
        keeps its greedy anchor.
    """
    if wanted < 1:
        raise ValueError("wanted must be at least 1")
    return max(1, min(wanted, free_slots // max(1, queued_chunks)))


class _Waiter:
    __slots__ = ("future", "since", "ticket", "wanted")

    def __init__(self, ticket: Ticket, wanted: int, future: asyncio.Future[int], since: float):
        self.ticket, self.wanted, self.future, self.since = ticket, wanted, future, since


class Admission:
    """One coordinator's admission queue over its peer table (see the module docstring).

    Args:
        table: the coordinator's peer table (``alive()`` records with
            ``capacity`` and ``in_flight``).
        max_queue: questions that may wait for their first slot at once;
            one more raises :class:`QueueFullError`. ``None``: no limit.
        poll_s: how often waiting chunks look at the table again [s].

    Attributes:
        load: answers in flight per node id, from every question of this coordinator.
        k_used: chunks admitted per redundancy k.
        refused: questions refused because the queue was full.
        listeners: called as ``listener(wait_s, k)`` for every chunk admitted.
    """

    def __init__(self, table: PeerTable, *, max_queue: int | None = 1024, poll_s: float = POLL_S):
        if max_queue is not None and max_queue < 0:
            raise ValueError("max_queue must be at least 0")
        self.table = table
        self.max_queue = max_queue
        self.poll_s = poll_s
        self.load: Counter[str] = Counter()
        self._peaks: dict[str, tuple[int, float]] = {}  # node id -> (our most answers there lately, until [s])
        self.reserved = 0  # slots granted to chunks not yet routed
        self.held: Counter[str] = Counter()  # per client key: answers in flight + reserved
        self._queues: dict[str, list[tuple[int, int, _Waiter]]] = {}  # key -> heap of (question seq, order, waiter)
        self.queued_chunks = 0
        self.queued_questions = 0  # tickets not yet admitted their first chunk
        self._seq = itertools.count()
        self._order = itertools.count()
        self._ticker: asyncio.Task | None = None
        self.k_used: Counter[int] = Counter()
        self.refused = 0
        self.admitted = 0
        self.waits: deque[float] = deque(maxlen=1000)  # recent waits of admitted chunks [s]
        self._first_grants: deque[float] = deque(maxlen=256)  # monotonic times questions got their first slots
        self.listeners: list[Callable[[float, int], None]] = []

    # Questions.

    def ticket(self, key: str = LOCAL_KEY) -> Ticket:
        """Register a question of client ``key``; :meth:`Ticket.close` when it ends.

        Raises:
            QueueFullError: ``max_queue`` questions already wait for their first slot.
        """
        if self.max_queue is not None and self.queued_questions >= self.max_queue:
            self.refused += 1
            raise QueueFullError(
                f"the admission queue is full ({self.queued_questions} questions wait for the swarm); retry later",
                self.retry_after_s(),
            )
        self.queued_questions += 1
        return Ticket(self, key, next(self._seq))

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely moved on: queued questions / recent admission rate, in [1, 60]."""
        now = time.monotonic()
        recent = [t for t in self._first_grants if now - t <= 60.0]
        if len(recent) < 2:
            return 5
        rate = len(recent) / max(1.0, now - recent[0])  # questions admitted per second
        return max(1, min(60, math.ceil(self.queued_questions / rate)))

    def routing_load(self) -> dict[str, int]:
        """busy − in_flight per node id where they differ: what routing adds to a peer's report so that
        it sees busy (module docstring); negative where the report still counts our ended requests.

        Only peers we have answers at, or had lately, can differ: the loop is over those, not the table
        (this runs for every chunk routed and every slot freed; over 100 peers it took ~1 ms).
        """
        out: dict[str, int] = {}
        load, peaks, now, get = self.load, self._peaks, time.monotonic(), self.table.get
        for node in [*load, *(n for n in peaks if n not in load)]:
            p = get(node)
            if p is None:
                continue
            ours = load.get(node, 0)
            if p.source == "self":  # read live
                then = ours
            else:
                peak = peaks.get(node)
                if peak is None or peak[1] < now:
                    if not ours:
                        peaks.pop(node, None)
                    then = ours
                else:
                    then = max(ours, peak[0])
            extra = ours - min(p.in_flight, then)  # busy − in_flight = others + ours − in_flight
            if extra:
                out[node] = extra
        return out

    def _count(self, node_id: str, answers: int) -> None:
        """Add ``answers`` (negative: remove) to our count at ``node_id``, keeping its recent peak."""
        ours = self.load[node_id] + answers
        if ours <= 0:
            self.load.pop(node_id, None)
        else:
            self.load[node_id] = ours
        peak = self._peaks.get(node_id)
        now = time.monotonic()
        if peak is None or peak[1] < now or ours >= peak[0]:
            self._peaks[node_id] = (ours, now + REPORT_AGE_S)

    def _free(self, peers) -> int:
        view = self.routing_load()
        return sum(
            max(0, (p.capacity or 1) - p.in_flight - view.get(p.node_id, 0)) for p in eligible_peers(peers, view)
        )

    def free_slots(self) -> int:
        """Answers the peers can take now, less the slots granted to chunks not routed yet (≥ 0)."""
        return max(0, self._free(self.table.alive()) - self.reserved)

    def stats(self) -> dict[str, object]:
        """Queue length, slots and waits for metrics and the dashboard (waits [s])."""
        waits = sorted(self.waits)
        return {
            "queued_chunks": self.queued_chunks,
            "queued_questions": self.queued_questions,
            "free_slots": self.free_slots(),
            "answers_in_flight": sum(self.load.values()),
            "admitted": self.admitted,
            "refused": self.refused,
            "k_used": dict(sorted(self.k_used.items())),
            "wait_p50_s": waits[len(waits) // 2] if waits else None,
            "wait_max_s": waits[-1] if waits else None,
        }

    async def close(self) -> None:
        """Stop the ticker (waiting chunks then wait for releases or their deadline). Idempotent."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None

    # Chunks.

    def _grant(self, waiter_ticket: Ticket, k: int, waited_s: float) -> None:
        self.reserved += k
        waiter_ticket.reserved += k
        self.held[waiter_ticket.key] += k
        if not waiter_ticket.started:
            waiter_ticket.started = True
            self.queued_questions -= 1
            self._first_grants.append(time.monotonic())
        self.k_used[k] += 1
        self.admitted += 1
        self.waits.append(waited_s)
        for listener in self.listeners:
            listener(waited_s, k)

    def _enqueue(self, waiter: _Waiter) -> None:
        heapq.heappush(self._queues.setdefault(waiter.ticket.key, []), (waiter.ticket.seq, next(self._order), waiter))
        self.queued_chunks += 1

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.ticket.key)
        if queue is None:
            return
        for i, entry in enumerate(queue):
            if entry[2] is waiter:
                queue[i] = queue[-1]
                queue.pop()
                heapq.heapify(queue)
                self.queued_chunks -= 1
                break
        if not queue:
            del self._queues[waiter.ticket.key]

    def pump(self) -> None:
        """Admit waiting chunks, fairly, while the peers have free slots (called on every release)."""
        if not self.queued_chunks:
            return
        peers = self.table.alive()
        if not any(p.model and p.url for p in peers):  # nobody will free a slot: fail now, not at the deadline
            self._fail_all(NoPeersError("no alive peer serves a model"))
            return
        free = max(0, self._free(peers) - self.reserved)
        now = time.monotonic()
        while free > 0 and self.queued_chunks:
            key = min(self._queues, key=lambda k: (self.held[k], self._queues[k][0][0]))
            queue = self._queues[key]
            _, _, waiter = heapq.heappop(queue)
            if not queue:
                del self._queues[key]
            self.queued_chunks -= 1
            if waiter.future.done():  # cancelled while queued
                continue
            k = adaptive_redundancy(free, self.queued_chunks + 1, waiter.wanted)
            self._grant(waiter.ticket, k, now - waiter.since)
            waiter.future.set_result(k)
            free -= k
        if self.queued_chunks and self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="dellm-admission")

    def _fail_all(self, exc: Exception) -> None:
        for queue in self._queues.values():
            for _, _, waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        self._queues.clear()
        self.queued_chunks = 0

    async def _tick(self) -> None:
        """While chunks wait: look at the table every ``poll_s`` (gossip lowers ``in_flight``, peers join)."""
        try:
            while self.queued_chunks:
                await asyncio.sleep(self.poll_s)
                self.pump()
        finally:
            self._ticker = None

    def _release(self, node_id: str, key: str, answers: int) -> None:
        self._count(node_id, -answers)
        self.held[key] -= answers
        if self.held[key] <= 0:
            del self.held[key]
        self.pump()


class Ticket:
    """One question's place in an :class:`Admission` (from :meth:`Admission.ticket`).

    Attributes:
        key: the client key it is counted under.
        seq: arrival order.
        started: a chunk of it was admitted.
        reserved: slots granted to its chunks and not yet routed.
    """

    __slots__ = ("admission", "closed", "key", "reserved", "seq", "started")

    def __init__(self, admission: Admission, key: str, seq: int):
        self.admission, self.key, self.seq = admission, key, seq
        self.started = False
        self.reserved = 0
        self.closed = False

    @property
    def load(self) -> dict[str, int]:
        """What routing adds to each peer's reported ``in_flight``: the coordinator's answers in flight
        there (every question's) beyond what the peer reported (:meth:`Admission.routing_load`)."""
        return self.admission.routing_load()

    async def admit(self, wanted: int) -> int:
        """Wait for slots for one chunk; returns the redundancy k to route it with (1 ≤ k ≤ ``wanted``).

        Waits in the fair order of the module docstring, for as long as the
        caller's deadline allows (cancel it to stop waiting). The k slots are
        reserved until :meth:`hold` takes them or the ticket closes.

        Raises:
            NoPeersError: no alive peer serves a model (none will free a slot).
        """
        adm = self.admission
        if not adm.queued_chunks and (free := adm.free_slots()) > 0:  # fast path: nobody waits
            k = adaptive_redundancy(free, 1, wanted)
            adm._grant(self, k, 0.0)
            return k
        waiter = _Waiter(self, wanted, asyncio.get_running_loop().create_future(), time.monotonic())
        adm._enqueue(waiter)
        adm.pump()
        try:
            return await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.give_back(waiter.future.result())  # granted as we were cancelled: give it back
            else:
                adm._remove(waiter)
            raise

    def hold(self, task: asyncio.Future, assignment: Assignment) -> None:
        """Count ``assignment``'s answers as in flight at its peer until ``task`` ends (from the reservation)."""
        adm, answers = self.admission, assignment.samples
        adm._count(assignment.peer_id, answers)
        taken = min(self.reserved, answers)
        self.reserved -= taken
        adm.reserved -= taken
        adm.held[self.key] += answers - taken  # a re-route beyond the grant
        task.add_done_callback(lambda _: adm._release(assignment.peer_id, self.key, answers))

    def give_back(self, slots: int | None = None) -> None:
        """Return ``slots`` (default: all) of this question's reserved, unrouted slots to the queue."""
        slots = self.reserved if slots is None else min(slots, self.reserved)
        if slots <= 0:
            return
        adm = self.admission
        self.reserved -= slots
        adm.reserved -= slots
        adm.held[self.key] -= slots
        if adm.held[self.key] <= 0:
            del adm.held[self.key]
        adm.pump()

    def close(self) -> None:
        """The question ended: return unused slots and leave the queue. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.started:
            self.admission.queued_questions -= 1
            self.started = True
        self.give_back(self.reserved)
