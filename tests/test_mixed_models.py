"""A swarm of different models, end to end over real websockets with SIMULATED engines (fast).

Two nodes announce the base model ``gemma-3-270m`` and one the instruct model
``SmolLM2-135M-Instruct``: base peers must get few-shot completion prompts,
instruct peers chat messages; rewards carry model and chunk kind; the vote
weighs each ballot by its model's learned reliability and the greedy anchor
comes from the most reliable model.
"""

from __future__ import annotations

import asyncio

import pytest

from dellm_p2p.swarm import Swarm

from .simulated_engine import SimulatedEngine
from .test_swarm import SimNode

GEMMA, SMOL = "gemma-3-270m", "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of Peru?"


@pytest.fixture
async def mixed():
    nodes = []
    nodes_spec = (("g1", GEMMA, "Lima", 0.3), ("g2", GEMMA, "Lima", 0.3), ("s1", SMOL, "It is Cusco.", 0.001))
    for name, model, reply, token_s in nodes_spec:
        engine = SimulatedEngine(reply, token_interval_s=token_s)
        nodes.append(SimNode(name, engine, model))
    first = await nodes[0].start([])
    for node in nodes[1:]:
        await node.start([first])
    async with asyncio.timeout(5):
        while not all(len(n.membership.table.alive()) == 2 for n in nodes):
            await asyncio.sleep(0.05)
    yield nodes, first
    for node in nodes:
        await node.close()


async def test_each_model_gets_its_own_prompt_form_and_rewards_name_model_and_kind(mixed):
    nodes, bootstrap = mixed
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as swarm:
        assert {p.model for p in swarm.table.alive()} == {GEMMA, SMOL}
        answer = await swarm.ask(QUESTION, redundancy=3)
        for _ in range(4):
            await swarm.ask(QUESTION, redundancy=3)
        counts = dict(swarm.fitness.model_counts)
    by_name = {n.name: n for n in nodes}
    base_prompt = by_name["g1"].engine.prompts[0]
    assert base_prompt.endswith(f"Q: {QUESTION}\nA:") and "Q: Who wrote Romeo and Juliet?" in base_prompt
    chat_prompt = by_name["s1"].engine.prompts[0]
    assert chat_prompt == QUESTION, "the instruct peer gets the chunk as a chat message, no shots"
    [chunk] = answer.chunks
    assert {swarm.table.get(a.peer_id).model for a in chunk.assignments} == {GEMMA, SMOL}
    assert {c.model for c in chunk.candidates} <= {GEMMA, SMOL} and chunk.vote.answer == "lima"
    assert (GEMMA, "LOOKUP") in {(r.model, r.kind) for r in answer.rewards}
    assert {r.kind for r in answer.rewards} == {"LOOKUP"}
    # Learned from agreement with the vote: the model that agrees ranks above the one that does not.
    assert counts[(GEMMA, "LOOKUP")][0] > 0 and counts.get((SMOL, "LOOKUP"), (0, 0))[0] == 0
    # The nodes count the gossiped records alike, and a new coordinator copies their view.
    async with asyncio.timeout(5):
        while by_name["s1"].fitness.model_counts.get((GEMMA, "LOOKUP"), (0, 0))[1] < counts[(GEMMA, "LOOKUP")][1]:
            await asyncio.sleep(0.05)
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as second:
        assert second.fitness.model_posterior(GEMMA, "LOOKUP") > second.fitness.model_posterior(SMOL, "LOOKUP")


async def test_ballots_count_their_models_reliability_and_the_anchor_comes_from_the_best_model(mixed):
    _, bootstrap = mixed
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as swarm:
        # What earlier questions taught this coordinator: SmolLM2 agrees on LOOKUP, Gemma rarely does.
        swarm.fitness.model_counts.update({(SMOL, "LOOKUP"): (50, 50), (GEMMA, "LOOKUP"): (5, 50)})
        weighted = await swarm.ask(QUESTION, redundancy=3)
        plain = await swarm.ask(QUESTION, redundancy=3, model_weights=False)
    [chunk] = weighted.chunks
    anchor = next(a for a in chunk.assignments if a.greedy)
    assert swarm.table.get(anchor.peer_id).model == SMOL, "the greedy anchor is the most reliable model's"
    assert chunk.vote.answer == "cusco", "one reliable ballot outweighs two unreliable ones"
    assert all(c.weight == 1.0 if c.model == SMOL else c.weight < 0.5 for c in chunk.candidates)
    assert plain.chunks[0].vote.answer == "lima", "counted alike, the two Gemma ballots win"


async def test_greedy_samples_are_asked_once_per_peer_not_refused(mixed):
    # At temperature 0 several samples of one peer would be identical and nodes refuse n > 1:
    # the coordinator asks one and lets it stand for the peer's share of k.
    _, bootstrap = mixed
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as swarm:
        answer = await swarm.ask(QUESTION, redundancy=5, temperature=0.0, model_weights=False)
    [chunk] = answer.chunks
    assert chunk.failures == [] and chunk.vote.answer in {"lima", "cusco"}
    per_peer = {}
    for c in chunk.candidates:
        per_peer.setdefault(c.peer_id, set()).add(c.text)
    assert all(len(texts) == 1 for texts in per_peer.values())
