"""The coordinator pipeline end to end over real websockets, with SIMULATED engines (fast).

Three in-process nodes on 127.0.0.1 (server + membership + fitness), mDNS
off, joined through a bootstrap URL, answer through the full Swarm API.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from dellm_p2p.coordinator.events import (
    CandidateReady,
    ChunkPlanned,
    ChunkRouted,
    ChunkVoted,
    Final,
    PeerFailed,
    PeerToken,
    SynthesisToken,
)
from dellm_p2p.identity import Identity
from dellm_p2p.membership.fitness import FitnessBook
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.server import NodeServer
from dellm_p2p.swarm import AllPeersFailedError, NoPeersError, QuestionError, Swarm, SwarmError

from .sim_node import membership_of
from .simulated_engine import SimulatedEngine

QUESTION = "Calculate 10% of 1000, then find savings accounts paying that much"
REPLIES = {  # first match wins: the synthesis prompt also contains the chunk texts
    "Question:": "Ten percent of 1000 is 100, and high-yield savings accounts pay that much.",
    "Calculate": "10% of 1000 is 100. Answer: 100",
    "savings": "Accounts paying 100 a year exist at many banks. Answer: high-yield savings accounts",
}


class SimNode:
    """An in-process node: a NodeServer with a simulated engine, membership and fitness."""

    def __init__(self, name: str, engine: SimulatedEngine, model: str = "simulated"):
        self.name, self.engine, self.model = name, engine, model
        self.identity = Identity.generate()
        self.node_id = self.identity.node_id
        self.server = NodeServer(engine, node_id=self.node_id, name=name, max_concurrency=8, identity=self.identity)

    async def start(self, bootstrap: list[str]) -> str:
        url = await self.server.start("127.0.0.1", 0)
        table = PeerTable(self.node_id, url)
        pool = PeerPool(node_id=self.node_id, name=self.name, url=url, identity=self.identity)
        self.fitness = FitnessBook(self.node_id, table, pool=pool, identity=self.identity)
        pool.model, pool.capacity = self.model, 8
        self.membership = membership_of(self.identity, self.name, url, table, pool, bootstrap, model=self.model)
        self.membership.fitness = self.fitness
        self.server.membership, self.server.fitness = self.membership, self.fitness
        await self.membership.start()
        return url

    async def close(self) -> None:
        await self.membership.close(goodbye_timeout_s=0.2)
        await self.fitness.close()
        await self.server.shutdown(0)


@pytest.fixture
async def cluster():
    nodes = []
    for name in ("sim-a", "sim-b", "sim-c"):
        engine = SimulatedEngine(token_interval_s=0.002)
        engine.replies = dict(REPLIES)
        nodes.append(SimNode(name, engine))
    first = await nodes[0].start([])
    for node in nodes[1:]:
        await node.start([first])
    async with asyncio.timeout(5):  # membership converges
        while not all(len(n.membership.table.alive()) == 2 for n in nodes):
            await asyncio.sleep(0.05)
    yield nodes, first
    for node in nodes:
        await node.close()


async def test_two_chunk_question_end_to_end(cluster):
    nodes, bootstrap = cluster
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as swarm:
        assert len(swarm.table.alive()) == 3
        events = [event async for event in swarm.stream(QUESTION)]
    kinds = [type(e) for e in events]
    assert kinds.count(ChunkPlanned) == 2 and kinds[-1] is Final
    assert PeerToken in kinds and SynthesisToken in kinds
    answer = events[-1].answer
    c1, c2 = answer.chunks
    assert c1.chunk.operation.value == "MATH" and c2.chunk.depends_on == ("c1",)
    assert {a.peer_id for a in c1.assignments} == {n.node_id for n in nodes}
    assert len({a.peer_id for a in c2.assignments}) >= 2
    assert c1.vote.answer == "100" and c1.vote.agreement == 1.0
    assert c2.vote.winner is not None
    # The dependent chunk saw the first chunk's answer.
    assert any("100" in p and "savings" in p for n in nodes for p in n.engine.prompts)
    assert answer.synthesizer in {n.node_id for n in nodes}
    assert "high-yield" in answer.text
    assert len(answer.rewards) == len(c1.rewards) + len(c2.rewards) >= 5
    # Fitness gossip reaches every node, and each changed: the records are signed by the Swarm,
    # a coordinator-only member (no URL) that every node learned, and none is rejected.
    assert all(r.issuer == swarm.node_id and len(r.signature) == 64 for r in answer.rewards)
    async with asyncio.timeout(5):
        while not all(n.fitness.applied >= len(answer.rewards) for n in nodes):
            await asyncio.sleep(0.05)
    for node in nodes:
        for other in nodes:
            assert node.fitness.fitness(other.node_id) > 0.5, (node.name, other.name)
        assert not any(node.fitness.rejected.values()), node.fitness.rejected
        coordinator = node.membership.table.get(swarm.node_id)
        assert (
            coordinator is not None and coordinator.url is None and coordinator.public_key == swarm.identity.public_key
        )


async def test_single_clear_chunk_returns_winner_without_synthesis(cluster):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.replies = {"capital": "The capital of France is Paris."}
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        answer = await swarm.ask("What is the capital of France?", strategy="weighted", redundancy=3)
    assert answer.synthesizer is None and answer.text == "The capital of France is Paris."
    assert answer.chunks[0].vote.answer == "paris"


@pytest.mark.parametrize("strategy", ["majority", "weighted", "borda", "ranking", "judge"])
async def test_every_strategy_runs(cluster, strategy):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.replies = {"capital": "The capital of France is Paris.", "best answer": "1"}
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        answer = await swarm.ask("What is the capital of France?", strategy=strategy)
    assert answer.chunks[0].vote.strategy.startswith(strategy)
    assert "Paris" in answer.text


async def test_no_decomposition_keeps_the_question_whole(cluster):
    _, bootstrap = cluster
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        answer = await swarm.ask(QUESTION, decompose="none", redundancy=1)
    assert len(answer.chunks) == 1 and answer.chunks[0].chunk.text == QUESTION


async def test_fewer_peers_than_redundancy_asks_for_samples(cluster):
    _, bootstrap = cluster
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        answer = await swarm.ask("What is 2 plus 2?", redundancy=5)
    assignments = answer.chunks[0].assignments
    assert sum(a.samples for a in assignments) == 5 and max(a.samples for a in assignments) == 2


async def test_failing_peer_is_rerouted_and_answer_arrives(cluster):
    nodes, bootstrap = cluster
    nodes[0].engine.broken = True
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        events = [e async for e in swarm.stream("What is the capital of France?", redundancy=3)]
    failures = [e for e in events if isinstance(e, PeerFailed)]
    assert failures and all(f.peer_id == nodes[0].node_id for f in failures)
    routed = [e for e in events if isinstance(e, ChunkRouted)]
    assert len(routed) == 2, "the failed peer's sample is re-routed"
    assert all(a.peer_id != nodes[0].node_id for a in routed[1].assignments)
    answer = events[-1].answer
    assert answer.chunks[0].vote.answer == "paris" and "Paris" in answer.text
    assert nodes[0].node_id not in answer.chunks[0].rewards


async def test_node_dying_mid_stream_is_survived(cluster):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.token_interval_s = 0.05
    victim = nodes[2]
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        killed = False
        async for event in swarm.stream("What is the capital of France?", redundancy=3):
            if isinstance(event, PeerToken) and event.peer_id == victim.node_id and not killed:
                killed = True
                await victim.server.shutdown(0)  # connections drop mid-stream
            if isinstance(event, Final):
                answer = event.answer
    assert killed
    assert any(peer == victim.node_id for peer, _ in answer.chunks[0].failures)
    assert answer.text


async def test_stragglers_are_cancelled_once_the_vote_is_decided(cluster):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.replies = {"2 plus 2": "2 plus 2 is 4. Answer: 4"}
    nodes[2].engine.token_interval_s = 0.5  # far slower than the others
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        events = [e async for e in swarm.stream("What is 2 plus 2?", redundancy=3)]
    voted = next(e for e in events if isinstance(e, ChunkVoted))
    assert voted.cancelled_stragglers == 1 and voted.result.agreement == 1.0
    async with asyncio.timeout(5):
        while nodes[2].engine.running:
            await asyncio.sleep(0.05)
    assert nodes[2].engine.aborted, "the straggler's node aborted the generation"


@pytest.mark.parametrize("grace", [0.0, 20.0])
async def test_a_straggler_is_rewarded_only_when_it_finishes_within_the_grace(cluster, grace):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.replies = {"2 plus 2": "2 plus 2 is 4. Answer: 4"}
    slow = nodes[2]
    slow.engine.token_interval_s = 0.02  # ten times slower than the others: the vote is decided without it
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        answer = await swarm.ask("What is 2 plus 2?", redundancy=3, straggler_grace=grace)
        chunk = answer.chunks[0]
        assert chunk.stragglers_cancelled == 1 and slow.node_id not in chunk.rewards
        assert len(chunk.rewards) == 2 and all(r > 0 for r in chunk.rewards.values())
        if grace:  # it finishes in the background, agrees with the decided vote, and earns a reward
            async with asyncio.timeout(5):
                while swarm.fitness.counts(slow.node_id) != (1, 1):
                    await asyncio.sleep(0.02)
            assert swarm.table.get(slow.node_id).fitness > 0.5
            assert not slow.engine.aborted
        else:
            async with asyncio.timeout(5):
                while slow.engine.running:
                    await asyncio.sleep(0.02)
            assert slow.engine.aborted and swarm.fitness.counts(slow.node_id) == (0, 0)


async def test_a_new_coordinator_copies_the_fitness_and_the_evidence_under_it(cluster):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.replies = {"2 plus 2": "2 plus 2 is 4. Answer: 4"}
    async with Swarm(peers=[bootstrap], mdns=False) as first:
        for _ in range(3):
            await first.ask("What is 2 plus 2?", redundancy=3)
        issued = {n.node_id: first.fitness.counts(n.node_id) for n in nodes}
    assert all(rewards >= 1 for _, rewards in issued.values())
    async with asyncio.timeout(5):  # the records reached every node
        while not all(n.fitness.counts(m.node_id) == issued[m.node_id] for n in nodes for m in nodes if m is not n):
            await asyncio.sleep(0.05)
    async with Swarm(peers=[bootstrap], mdns=False) as second:
        copied = {n.node_id: second.fitness.counts(n.node_id) for n in nodes}
        fitness = {n.node_id: second.fitness.fitness(n.node_id) for n in nodes}
    assert copied == issued
    assert all(f > 0.5 for f in fitness.values())


async def test_every_peer_failing_is_a_clear_error(cluster):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.broken = True
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        with pytest.raises(AllPeersFailedError, match="c1"):
            await asyncio.wait_for(swarm.ask("What is the capital of France?"), 20)


@pytest.mark.parametrize(
    ("question", "options", "message"),
    [
        ("", {}, "empty"),
        ("   \n\t ", {}, "empty"),
        ("x" * 100_000, {}, "limit"),
        ("What?", {"strategy": "coin-flip"}, "unknown strategy"),
        ("What?", {"redundancy": 0}, "redundancy"),
    ],
)
async def test_bad_questions_are_refused(cluster, question, options, message):
    _, bootstrap = cluster
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        with pytest.raises(QuestionError, match=message):
            await swarm.ask(question, **options)


async def test_no_alive_peers_is_a_clear_error_not_a_hang():
    with pytest.raises(NoPeersError, match="no alive node"):
        async with asyncio.timeout(10):
            async with Swarm(peers=["ws://127.0.0.1:9"], mdns=False, discover_timeout_s=1):
                pass


async def test_question_deadline_is_enforced(cluster):
    nodes, bootstrap = cluster
    for n in nodes:
        n.engine.token_interval_s = 1.0
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        with pytest.raises(SwarmError, match="within"):
            await swarm.ask("What is the capital of France?", timeout_s=0.5)


def test_cli_errors_are_one_line_with_nonzero_exit():
    def ask(*args):
        return subprocess.run(
            [sys.executable, "-m", "dellm_p2p.cli.main", "ask", *args], capture_output=True, text=True, timeout=60
        )

    empty = ask("   ", "--no-mdns")
    assert empty.returncode == 2 and "empty" in empty.stderr
    nobody = ask("What is 2+2?", "--no-mdns", "--peer", "ws://127.0.0.1:9", "--discover-timeout", "1")
    assert nobody.returncode == 1 and nobody.stderr.strip().count("\n") == 0 and "no alive node" in nobody.stderr
    bad = ask("x", "--strategy", "coin-flip")
    assert bad.returncode == 2 and "coin-flip" in bad.stderr
    assert "Traceback" not in empty.stderr + nobody.stderr + bad.stderr


async def test_events_are_typed_and_ordered(cluster):
    _, bootstrap = cluster
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        events = [e async for e in swarm.stream(QUESTION)]
    first_routed = next(i for i, e in enumerate(events) if isinstance(e, ChunkRouted))
    assert all(isinstance(e, ChunkPlanned) for e in events[:first_routed])
    ready = [e for e in events if isinstance(e, CandidateReady)]
    assert all(e.candidate.answer is not None for e in ready)
    assert isinstance(events[-1], Final)


async def test_start_waits_for_every_bootstrap_peer_to_answer_its_join():
    """Two nodes that do not know each other: the Swarm routes to both, even when one join is slow."""
    nodes = [SimNode(name, SimulatedEngine(token_interval_s=0.002)) for name in ("solo-a", "solo-b")]
    urls = [await node.start([]) for node in nodes]
    swarm = Swarm(peers=urls, mdns=False, discover_timeout_s=10)
    if not hasattr(swarm.membership, "push_pull"):
        pytest.skip("SWIM membership only (DELLM_MEMBERSHIP=gossip)")
    real = swarm.membership.push_pull

    async def slow_to_b(url: str) -> bool:
        if url == urls[1]:
            await asyncio.sleep(1.5)  # a busy node: its join answers late
        return await real(url)

    swarm.membership.push_pull = slow_to_b
    try:
        await swarm.start()
        assert {p.node_id for p in swarm.table.alive() if p.model} == {n.node_id for n in nodes}
    finally:
        await swarm.close()
        for node in nodes:
            await node.close()
