"""A mixed swarm end to end: a real SmolLM2-135M-Instruct node and a real Gemma 3 270M node answer one question."""

from __future__ import annotations

import pytest

from dellm_p2p.client import PeerClient
from dellm_p2p.models import card_for
from dellm_p2p.swarm import Swarm

pytestmark = pytest.mark.slow


async def test_both_models_answer_in_a_mixed_swarm(vllm_node, gemma_node):
    assert (vllm_node.model, gemma_node.model) == ("SmolLM2-135M-Instruct", "gemma-3-270m")
    async with await PeerClient.connect(gemma_node.url) as client:
        assert client.remote.model == "gemma-3-270m"  # what peers see of it
    async with Swarm(peers=[vllm_node.url, gemma_node.url], mdns=False, discover_timeout_s=60) as swarm:
        serving = [p for p in swarm.table.alive() if p.model]
        models = {p.node_id: p.model for p in serving}
        assert {"SmolLM2-135M-Instruct", "gemma-3-270m"} <= set(models.values())
        # One sample per serving peer, no greedy anchor, ballots of equal weight: with two peers, neither reply
        # alone can decide the vote (is_decided needs leader > runner-up + outstanding), so both are awaited and
        # both become candidates. With model weights on, the session nodes' learned evidence for SmolLM2 makes
        # the unproven Gemma ballot lighter, and SmolLM2's reply alone may decide (the product's behaviour).
        answer = await swarm.ask(
            "What is the capital of France?", decompose="none", anchor=False, redundancy=len(serving),
            model_weights=False,
            max_tokens=16, timeout_s=600, chunk_timeout_s=600, synthesize=False,
        )  # fmt: skip
    (trace,) = answer.chunks
    asked = {models[a.peer_id] for a in trace.assignments}
    assert {"SmolLM2-135M-Instruct", "gemma-3-270m"} <= asked, "the chunk was routed to both models"
    answered = {models[c.peer_id] for c in trace.candidates}
    # Other session nodes, met through gossip, could decide the vote before Gemma replies; a request that failed
    # on a loaded machine is re-routed to the other node.
    if len(serving) == 2 and not trace.failures:
        assert answered == {"SmolLM2-135M-Instruct", "gemma-3-270m"}, [(c.model, c.text) for c in trace.candidates]
    assert all(c.text.strip() for c in trace.candidates)
    assert trace.vote is not None and trace.vote.winner is not None
    assert answer.text.strip()
    assert card_for(gemma_node.model) is not None and not card_for(gemma_node.model).instruct
