"""The Python async API: ask the network a question.

::

    async with Swarm(mdns_interfaces=["127.0.0.1"]) as swarm:
        answer = await swarm.ask("Calculate 10% interest on $1000 then find the best savings accounts")
        print(answer.text)

        async for event in swarm.stream("What is the capital of France?"):
            ...  # ChunkPlanned, ChunkRouted, PeerToken, CandidateReady, ChunkVoted, SynthesisToken, Final

A :class:`Swarm` joins the network as a short-lived coordinator: it finds
nodes by mDNS and/or bootstrap URLs, learns the rest by membership gossip,
copies their fitness, and runs the coordinator pipeline
(:mod:`dellm_p2p.coordinator.pipeline`). It serves nothing and announces
nothing on mDNS, but gossips its own member entry without a URL (a
coordinator-only member): peers learn its public key that way, which they
need to accept the reward records it signs. Its identity is ephemeral (a
new key pair, hence a new node id, per Swarm) unless one is given.
Errors are :class:`~dellm_p2p.coordinator.errors.SwarmError`
subclasses with one-line messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from .client import PeerError
from .config import DEFAULT_MEMBERSHIP
from .coordinator.admission import Admission
from .coordinator.errors import AllPeersFailedError, DeadlineError, NoPeersError, QuestionError, SwarmError
from .coordinator.events import Event, Final, SwarmAnswer
from .coordinator.history import check_messages, split_conversation
from .coordinator.pipeline import AskOptions, check_question
from .coordinator.stream import stream_question
from .discovery import MdnsDiscovery
from .identity import Identity
from .learn.records import RecordStore
from .membership import FitnessBook, Membership, SwimMembership
from .peer_table import PeerTable
from .pool import PeerPool

log = logging.getLogger(__name__)

#: Connections a coordinator's pool keeps open. Routing tries every serving peer (Thompson sampling) and
#: keeps using many of them, so a pool smaller than the network reconnects in the request path and evicts
#: idle connections that a request has just taken from the pool: in ``scripts/bench_scale.py`` with 20
#: simulated nodes and a pool of 8, 44 connects/s, 249 of 2,044 requests lost their connection and were
#: re-routed, and latency p99 rose from 114 to 163 ms (100 ms answers); a node's pool keeps 64. Up to 512
#: peers, a coordinator keeps one connection to each it asked (file descriptors: well below 1,024).
COORDINATOR_MAX_CONNECTIONS = 512

__all__ = [
    "AllPeersFailedError",
    "AskOptions",
    "DeadlineError",
    "NoPeersError",
    "QuestionError",
    "Swarm",
    "SwarmAnswer",
    "SwarmError",
]


class Swarm:
    """A coordinator that joins the network and answers questions with it.

    Args:
        peers: bootstrap node URLs (``ws://host:port``).
        mdns: browse mDNS for nodes.
        mdns_interfaces: IPv4 addresses to browse on (``None`` = all).
        options: defaults for every question (see :class:`AskOptions`).
        discover_timeout_s: how long :meth:`start` waits for the first node
            that serves a model [s]; it then waits up to a second more for
            the membership to settle.
        cluster_key: the cluster's shared secret (bytes, see
            :func:`dellm_p2p.security.load_cluster_key`), proven to every
            node; ``None`` reaches only nodes without a key.
        ssl_context: TLS context for ``wss://`` nodes (see
            :func:`dellm_p2p.security.client_ssl_context`; ``None``: system CAs).
        identity: the key pair that signs this coordinator's reward records
            and gives its node id (e.g. ``load_identity(path)`` to keep one
            across runs); ``None``: a fresh ephemeral one.
        membership: ``swim`` or ``gossip``: what the network's nodes run
            (``membership`` in their configuration; default: the
            ``DELLM_MEMBERSHIP`` environment variable, else ``swim``).
        records: where this coordinator keeps the consensus it reaches per
            chunk (:class:`~dellm_p2p.learn.records.RecordStore`, issue 23);
            ``None``: nothing is kept.
    """

    def __init__(
        self,
        *,
        peers: Sequence[str] = (),
        mdns: bool = True,
        mdns_interfaces: Sequence[str] | None = None,
        options: AskOptions | None = None,
        discover_timeout_s: float = 5.0,
        cluster_key: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        identity: Identity | None = None,
        membership: str | None = None,
        records: RecordStore | None = None,
    ):
        self.records = records
        membership = membership or os.environ.get("DELLM_MEMBERSHIP") or DEFAULT_MEMBERSHIP
        if membership not in ("swim", "gossip"):
            raise ValueError(f"membership must be 'swim' or 'gossip', not {membership!r}")
        self.options = (options or AskOptions()).checked()
        self.identity = identity or Identity.generate()
        self.node_id = self.identity.node_id
        self.table = PeerTable(self.node_id, "")
        self.pool = PeerPool(
            node_id=self.node_id,
            name="coordinator",
            url=None,
            cluster_key=cluster_key,
            ssl_context=ssl_context,
            identity=self.identity,
            max_connections=COORDINATOR_MAX_CONNECTIONS,
        )
        # A coordinator is a member without a URL or a model: it is never probed nor routed to.
        member = dict(
            node_id=self.node_id,
            name="coordinator",
            url=None,
            model=None,
            capacity=0,
            table=self.table,
            pool=self.pool,
            bootstrap=list(peers),
            identity=self.identity,
        )
        self.membership: Membership | SwimMembership
        if membership == "gossip":
            self.membership = Membership(**member, gossip_interval_s=0.5)
        else:
            self.membership = SwimMembership(**member, cluster_key=cluster_key)
        self.fitness = FitnessBook(self.node_id, self.table, pool=self.pool, identity=self.identity)
        self.membership.fitness = self.fitness
        # Questions asked at once share the peers' slots: what they cannot take now waits here.
        self.admission = Admission(self.table)
        self._mdns = (
            MdnsDiscovery(
                node_id=self.node_id,
                name="coordinator",
                port=1,
                model=None,
                capacity=0,
                interfaces=list(mdns_interfaces) if mdns_interfaces else None,
                on_found=self.membership.on_found,
                on_removed=self.membership.on_removed,
                announce=False,
            )
            if mdns
            else None
        )
        self._bootstrap = list(peers)
        self._discover_timeout_s = discover_timeout_s
        self._started = False

    async def __aenter__(self) -> Swarm:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Join: discover nodes and copy their fitness.

        Returns once a node serving a model is known and every node being
        joined (bootstrap URLs, nodes mDNS found) has answered its first
        exchange or failed it, or at the discovery deadline if some node
        serves by then.

        Raises:
            NoPeersError: no node serving a model answered within the discovery timeout.
        """
        if self._started:
            return
        self._started = True
        await self.membership.start()
        if self._mdns is not None:
            await self._mdns.start()
        deadline = time.monotonic() + self._discover_timeout_s
        # Every bootstrap peer gets its first answer in (or fails it) before we route: the first node
        # found must not take every sample while the join with the second one is still under way.
        while not self._serving_peers() or self.membership.joining:
            if time.monotonic() > deadline:
                if self._serving_peers():
                    break
                await self.close()
                raise NoPeersError(self._no_peers_reason())
            await asyncio.sleep(0.05)
        await self._settle(min(1.0, max(0.0, deadline - time.monotonic()) + 0.5))
        await self._copy_fitness()

    async def close(self) -> None:
        """Leave: stop discovery, let reward gossip go out (up to 2 s), close connections. Idempotent."""
        if self._mdns is not None:
            await self._mdns.close()
        await self.admission.close()
        await self.fitness.flush()
        await self.membership.close()
        await self.fitness.close()

    def _serving_peers(self):
        return [p for p in self.table.alive() if p.model and p.rtt_ms is not None]

    async def _settle(self, max_s: float) -> None:
        """Wait until the set of reachable nodes stops growing (or ``max_s`` [s])."""
        seen, stable_since, end = len(self._serving_peers()), time.monotonic(), time.monotonic() + max_s
        while time.monotonic() < end and time.monotonic() - stable_since < 0.4:
            await asyncio.sleep(0.05)
            now = len(self._serving_peers())
            if now != seen:
                seen, stable_since = now, time.monotonic()

    async def _copy_fitness(self) -> None:
        """Start from the network's view of fitness and its evidence: ask one node for its table.

        With the fitness come the counts it rests on (``rewards``, ``agreed``):
        routing draws from the Beta posterior they give, so a coordinator
        that copied only the fitness would explore every proven peer as a
        newcomer (a short-lived one, e.g. ``dellm ask``, never got past it).
        A node that does not send them (older software) leaves them at 0.
        """
        for peer in self._serving_peers()[:2]:
            try:
                client = await self.pool.get(peer.url)
                view = await client.peers(timeout_s=2.0)
            except PeerError:
                continue
            rows = [(row.node_id, row.fitness, row.agreed, row.rewards) for row in view.peers]
            for node_id, value, agreed, rewards in [*rows, (view.node_id, view.fitness, view.agreed, view.rewards)]:
                if (record := self.table.get(node_id)) is not None:
                    record.fitness = value
                    record.agreed, record.rewards = min(agreed, rewards), rewards
            self.fitness.adopt_model_counts((m.model, m.kind, m.agreed, m.rewards) for m in view.models)
            return

    def _no_peers_reason(self) -> str:
        where = []
        if self._mdns is not None:
            interfaces = self._mdns.interfaces
            where.append(f"mDNS on {', '.join(interfaces) if interfaces else 'all interfaces'}")
        if self._bootstrap:
            where.append(f"bootstrap {', '.join(self._bootstrap)}")
        known = len(self.table)
        refused = next(iter(self.membership.refusals.values()), None)
        return (
            f"no alive node serving a model found via {' and '.join(where) or 'nothing (no mDNS, no --peer)'} "
            f"within {self._discover_timeout_s:g} s ({known} node(s) known)"
            + (f"; {len(self.membership.refusals)} refused us, e.g. {refused}" if refused else "")
        )

    async def ask(self, question: str, *, history: Sequence[Mapping[str, str]] = (), **options) -> SwarmAnswer:
        """Answer ``question``; keyword arguments override :class:`AskOptions` fields for this question.

        Args:
            question: what to answer (decomposed into chunks).
            history: earlier messages of the conversation (``{"role",
                "content"}``, oldest first), carried by every chunk prompt and
                the synthesis, trimmed oldest first to fit the peers'
                context windows (see :meth:`chat`).

        Raises:
            QuestionError: empty or too long question, unknown strategy or setting, a malformed history.
            NoPeersError: no alive node serves a model.
            AllPeersFailedError: every peer failed on a chunk.
            DeadlineError: the question's deadline passed (a :class:`SwarmError`); questions asked at
                once wait for the peers' free slots in :attr:`admission`, within this deadline.
            QueueFullError: ``admission.max_queue`` questions already wait (a :class:`SwarmError`).
        """
        async for event in self.stream(question, history=history, **options):
            if isinstance(event, Final):
                return event.answer
        raise SwarmError("the pipeline ended without an answer")

    async def stream(
        self, question: str, *, history: Sequence[Mapping[str, str]] = (), **options
    ) -> AsyncIterator[Event]:
        """Answer ``question`` as a stream of typed events ending with :class:`Final` (same errors as :meth:`ask`)."""
        try:
            opts = dataclasses.replace(self.options, **options).checked()
        except TypeError as exc:
            raise QuestionError(f"unknown option: {exc}") from None
        text = check_question(question, opts.max_question_chars)
        earlier = check_messages(history)
        if not self._started:
            await self.start()
        if not self._serving_peers():
            raise NoPeersError(self._no_peers_reason())
        async for event in stream_question(
            text, opts, coordinator_id=self.node_id, table=self.table, pool=self.pool,
            fitness=self.fitness, history=earlier, admission=self.admission,
            on_answer=self.records.record_answer if self.records is not None else None,
        ):  # fmt: skip
            yield event

    async def chat(self, messages: Sequence[Mapping[str, str]], **options) -> SwarmAnswer:
        """Answer a conversation: the last user message, with the messages before it as context.

        ``messages`` are OpenAI-style ``{"role": "system" | "user" |
        "assistant", "content": str}``, oldest first. Only the last user
        message is decomposed; the earlier turns reach every peer (see
        :meth:`ask`'s ``history``). Keyword arguments override
        :class:`AskOptions` fields.

        Raises:
            QuestionError: no user message, an unknown role, or as :meth:`ask`.
            NoPeersError, AllPeersFailedError, DeadlineError: as :meth:`ask`.
        """
        question, history = split_conversation(messages)
        return await self.ask(question, history=history, **options)

    async def stream_chat(self, messages: Sequence[Mapping[str, str]], **options) -> AsyncIterator[Event]:
        """:meth:`chat` as a stream of events ending with :class:`Final` (same errors)."""
        question, history = split_conversation(messages)
        async for event in self.stream(question, history=history, **options):
            yield event
