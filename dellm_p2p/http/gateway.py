"""What the HTTP API needs from the network, over one peer table, pool and fitness book.

A :class:`Gateway` answers through the coordinator pipeline
(:func:`~dellm_p2p.coordinator.stream.stream_question`, the same door as
:class:`~dellm_p2p.swarm.Swarm`), or sends a request straight to the
best-ranked peer serving a named model, failing over to the next.

On a node (:meth:`Gateway.for_node`) the node itself is one of the peers:
its own table never holds its own entry, so the gateway adds a record for
it and reaches its own engine over one loopback websocket as a plain client
(so cancel, limits and stats work exactly as for remote peers). Around a
:class:`~dellm_p2p.swarm.Swarm` (:meth:`Gateway.for_swarm`) it uses the
swarm's view as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..client import PeerClient, PeerError
from ..coordinator.admission import LOCAL_KEY, Admission
from ..coordinator.errors import AllPeersFailedError, NoPeersError, QuestionError
from ..coordinator.events import Event
from ..coordinator.pipeline import AskOptions
from ..coordinator.route import eligible_peers, score_peers
from ..coordinator.stream import stream_question
from ..peer_table import PeerRecord, PeerState
from ..protocol import Done, ErrorCode, SamplingParams, Token

if TYPE_CHECKING:
    from ..learn.records import RecordStore
    from ..membership import FitnessBook
    from ..peer_table import PeerTable
    from ..pool import PeerPool
    from ..swarm import Swarm

DIRECT_TRIES = 4  # peers tried for a peer-model request before giving up


class UnknownModelError(LookupError):
    """No peer in the network announces the requested model."""


class LocalNode(Protocol):
    """What :meth:`Gateway.for_node` needs from the node it runs on (:class:`dellm_p2p.node.Node` is one).

    The HTTP layer knows this interface, never the node itself: the node
    imports the HTTP layer, and nothing here imports it back.
    """

    node_id: str
    url: str

    def network(self) -> tuple[PeerTable, PeerPool, FitnessBook]:
        """The started node's peer table, connection pool and fitness book."""
        ...

    def in_flight(self) -> int:
        """Requests the node's server is serving now."""
        ...

    def self_record(self) -> PeerRecord | None:
        """The node as one peer of its own network; ``None`` when it serves no model."""
        ...

    async def connect_self(self) -> PeerClient:
        """A plain client connection to the node's own server (loopback)."""
        ...


class _TableWithSelf:
    """The node's peer table plus a record for the node itself (routing sees it as one more peer)."""

    def __init__(self, table: PeerTable, me: Callable[[], PeerRecord | None]):
        self._table, self._me = table, me

    def _mine(self) -> list[PeerRecord]:
        me = self._me()
        return [me] if me is not None else []  # None once the node's server has stopped

    def alive(self) -> list[PeerRecord]:
        return [*self._table.alive(), *self._mine()]

    def records(self) -> list[PeerRecord]:
        return [*self._table.records(), *self._mine()]

    def get(self, node_id: str) -> PeerRecord | None:
        me = self._me()
        return me if me is not None and node_id == me.node_id else self._table.get(node_id)

    def touch(self, node_id: str) -> None:
        me = self._me()
        if me is None or node_id != me.node_id:
            self._table.touch(node_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class _PoolWithSelf:
    """The node's pool plus one loopback connection to its own server for its own URL."""

    def __init__(self, pool: PeerPool, self_url: str, connect: Callable[[], Any]):
        self._pool, self._self_url, self._connect = pool, self_url, connect
        self._client: PeerClient | None = None
        self._lock = asyncio.Lock()

    async def get(self, url: str) -> PeerClient:
        if url != self._self_url:
            return await self._pool.get(url)
        async with self._lock:
            if self._client is None or self._client.closed:
                self._client = await self._connect()
            return self._client

    def connection(self, url: str) -> PeerClient | None:
        if url != self._self_url:
            return self._pool.connection(url)
        return self._client if self._client is not None and not self._client.closed else None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close("the HTTP gateway stopped")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


@dataclass
class Direct:
    """One item of a peer-model request: the peer answering and its frame."""

    peer_id: str
    item: Token | Done


class Gateway:
    """Answers questions for the HTTP API.

    Args:
        node_id: the coordinator's node id (signs rewards).
        table, pool, fitness: the network view questions run with.
        options: default :class:`AskOptions` of ``model: dellm`` questions.
        in_flight: requests the node serves now (``None`` for a swarm).
        admission: the admission queue ``model: dellm`` questions wait in
            (``None``: a new one over ``table``; a swarm's gateway shares the swarm's).
        records: where the consensus of ``model: dellm`` questions is kept
            (issue 23; ``None``: not kept).
    """

    def __init__(
        self,
        *,
        node_id: str,
        table: PeerTable | _TableWithSelf,
        pool: PeerPool | _PoolWithSelf,
        fitness: FitnessBook,
        options: AskOptions | None = None,
        in_flight: Callable[[], int] | None = None,
        admission: Admission | None = None,
        records: RecordStore | None = None,
    ):
        self.node_id = node_id
        self.records = records
        self.table = table
        self.pool = pool
        self.fitness = fitness
        self.options = (options or AskOptions()).checked()
        self.in_flight = in_flight or (lambda: 0)
        self.admission = admission if admission is not None else Admission(table)  # type: ignore[arg-type]
        self.load: dict[str, int] = {}  # peer-model requests in flight per node id, from this gateway

    @classmethod
    def for_swarm(cls, swarm: Swarm) -> Gateway:
        """A gateway over a started :class:`Swarm`'s view (it serves nothing itself)."""
        return cls(
            node_id=swarm.node_id, table=swarm.table, pool=swarm.pool, fitness=swarm.fitness, options=swarm.options,
            admission=swarm.admission, records=swarm.records,
        )  # fmt: skip

    @classmethod
    def for_node(
        cls, node: LocalNode, options: AskOptions | None = None, records: RecordStore | None = None
    ) -> Gateway:
        """A gateway over a started node, the node itself included when it serves a model (``records`` as above)."""
        table: Any
        pool: Any
        table, pool, fitness = node.network()
        if node.self_record() is not None:
            table = _TableWithSelf(table, node.self_record)
            pool = _PoolWithSelf(pool, node.url, node.connect_self)
        return cls(
            node_id=node.node_id,
            table=table,
            pool=pool,
            fitness=fitness,
            options=options,
            in_flight=node.in_flight,
            records=records,
        )

    async def close(self) -> None:
        """Close the loopback connection, if any, and stop the admission queue's ticker. Idempotent."""
        await self.admission.close()
        if isinstance(self.pool, _PoolWithSelf):
            await self.pool.close()

    # The network as the API shows it.

    def serving(self) -> list[PeerRecord]:
        """Alive peers (this node included) that serve a model."""
        return [p for p in self.table.alive() if p.model]

    def models(self) -> dict[str, int]:
        """Models served now: model name -> alive peers serving it."""
        out: dict[str, int] = {}
        for peer in self.serving():
            out[peer.model] = out.get(peer.model, 0) + 1  # type: ignore[index]
        return out

    def peer_states(self) -> dict[str, int]:
        """Known peers per state (alive, suspect, dead, left; this node counts as alive)."""
        out = {state.value: 0 for state in PeerState}
        for record in self.table.records():
            out[record.state.value] += 1
        return out

    # Answering.

    async def stream(
        self,
        question: str,
        *,
        history: Sequence[Mapping[str, str]] = (),
        options: AskOptions | None = None,
        client: str = LOCAL_KEY,
    ) -> AsyncIterator[Event]:
        """The pipeline's events for ``question`` (checked) ending with ``Final``; errors as ``stream_question``.

        The question waits in :attr:`admission` under the client key ``client`` when the peers are busy.

        Raises:
            NoPeersError: no alive peer serves a model.
        """
        if not self.serving():
            raise NoPeersError("no alive peer serves a model")
        async for event in stream_question(
            question,
            options or self.options,
            coordinator_id=self.node_id,
            table=self.table,  # type: ignore[arg-type]
            pool=self.pool,
            fitness=self.fitness,
            history=history,  # type: ignore[arg-type]
            admission=self.admission,
            client=client,
            on_answer=self.records.record_answer if self.records is not None else None,
        ):
            yield event

    def ranked(self, model: str) -> list[PeerRecord]:
        """Peers serving ``model`` that can take a request, best route score first.

        Raises:
            UnknownModelError: no alive peer announces ``model``.
        """
        peers = [p for p in self.table.alive() if p.model == model]
        if not peers:
            raise UnknownModelError(model)
        eligible = eligible_peers(peers, self.load)
        scores = score_peers(eligible, self.options.weights)
        return sorted(eligible, key=lambda p: (scores[p.node_id], p.node_id))

    async def direct(
        self,
        model: str,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        prompt: str | None = None,
        params: SamplingParams,
        timeout_s: float,
    ) -> AsyncIterator[Direct]:
        """Stream one request to the best peer serving ``model``; no decomposition, no vote.

        A peer that fails before its first token hands over to the next best
        (up to :data:`DIRECT_TRIES` peers); after a token was yielded, its
        failure ends the stream (the text cannot be taken back).
        ``params.max_tokens`` is capped at each peer's context window (its
        hello), as clients often ask for more than a small model has.

        Raises:
            UnknownModelError: no alive peer serves ``model``.
            NoPeersError: every peer serving it is at capacity.
            QuestionError: every peer refused the request itself (prompt too
                long for its context window, parameters out of range).
            AllPeersFailedError: every peer tried failed (the reasons in ``str``).
            TimeoutError: ``timeout_s`` [s] passed.
        """
        ranked = self.ranked(model)
        if not ranked:
            raise NoPeersError(f"every peer serving {model} is at capacity")
        failures: list[str] = []
        refused = 0  # peers that refused the request itself, not for their own trouble
        async with asyncio.timeout(timeout_s):
            for peer in ranked[:DIRECT_TRIES]:
                started = False
                self.load[peer.node_id] = self.load.get(peer.node_id, 0) + 1
                try:
                    client = await self.pool.get(peer.url)  # type: ignore[arg-type]
                    window = client.remote.max_model_len or params.max_tokens
                    async for item in client.generate(
                        messages=list(messages) if messages is not None else None,
                        prompt=prompt,
                        params=params.model_copy(update={"max_tokens": min(params.max_tokens, window)}),
                        timeout_s=timeout_s,
                    ):
                        started = True
                        yield Direct(peer.node_id, item)
                    return
                except PeerError as exc:
                    if started:
                        raise AllPeersFailedError(f"{peer.node_id} failed mid-answer: {exc}") from None
                    failures.append(f"{peer.node_id}: {exc}")
                    refused += exc.code in (ErrorCode.PROMPT_TOO_LONG, ErrorCode.INVALID_PARAMS)
                finally:
                    self.load[peer.node_id] -= 1
                    if not self.load[peer.node_id]:
                        del self.load[peer.node_id]
        if failures and refused == len(failures):
            raise QuestionError(f"every peer serving {model} refused the request: {'; '.join(failures)}")
        raise AllPeersFailedError("; ".join(failures) or "no peer answered")
