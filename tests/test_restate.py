"""Change-of-quantity word problems restated as direct arithmetic (issue 24: the apples)."""

from __future__ import annotations

import pytest

from dellm_p2p.coordinator.restate import restate, restate_chunk
from dellm_p2p.coordinator.types import Chunk, Operation
from dellm_p2p.swarm import Swarm

from .test_swarm import cluster  # noqa: F401 (fixture)

APPLES = "If I have 3 apples, buy 5 more and eat 2, how many apples do I have?"


@pytest.mark.parametrize(
    ("question", "restated"),
    [
        (APPLES, "What is 3 plus 5 minus 2?"),
        ("Sam had 10 pens, gave away 4 and then found 3. How many pens does Sam have?", "What is 10 minus 4 plus 3?"),
        (
            "There are 20 birds on a tree. 8 fly away and 3 more arrive. How many birds are on the tree?",
            "What is 20 minus 8 plus 3?",
        ),
        (
            "Lisa has 12 cookies and eats 5. Then she bakes 7 more. How many cookies does she have?",
            "What is 12 minus 5 plus 7?",
        ),
        ("I have $20 and spend $5 on lunch. How much money do I have left?", "What is 20 minus 5?"),
        ("Tom has 5 apples and gives 2 to his sister. How many apples does Tom have left?", "What is 5 minus 2?"),
        # GSM8K test set, the two questions of all 1319 that are restated (both right: 17 and 21).
        (
            "Patricia has 30 roses. She gave 24 roses to her mother. She bought 15 more roses.  How many roses did "
            "she have now?",
            "What is 30 minus 24 plus 15?",
        ),
    ],
)
def test_a_chain_of_gains_and_losses_is_restated(question, restated):
    assert restate(question) == restated


@pytest.mark.parametrize(
    "question",
    [
        "If I have 3 bags of 5 apples each and lose 2 apples, how many apples do I have?",  # each: a product
        "How many apples are there in 3 boxes of 4 apples plus 2 loose apples?",
        "Tom has 5 apples and gives 2 to Anna. How many apples does Anna have?",  # two people
        "Tom has 5 apples and gives 2 to his sister. How many apples does his sister have?",  # the recipient
        "Lisa has 12 cookies and eats 5. How many cookies did she eat?",  # asks for a change
        "There were 15 people on the bus. At the first stop 6 got off and 4 got on. How many people are on the bus?",
        "Ann has 8 pens. Bob has 3 more pens than Ann. How many pens does Bob have?",  # a comparison
        "I have 7 apples and buy 3 more. How many more apples do I need to have 20?",
        "What is 3 plus 5?",  # already direct
        "I have 3 apples and eat 50% of them. How many apples do I have?",
        "I buy 5 apples and eat 2. How many apples do I have?",  # no starting amount
        "What is the capital of France?",
    ],
)
def test_anything_else_is_left_as_it_is(question):
    assert restate(question) is None


def test_only_independent_math_chunks_are_restated():
    chunk = Chunk("c1", APPLES, Operation.MATH)
    assert restate_chunk(chunk) == Chunk("c1", "What is 3 plus 5 minus 2?", Operation.MATH)
    assert restate_chunk(Chunk("c1", APPLES, Operation.GENERAL)) is None
    assert restate_chunk(Chunk("c2", APPLES, Operation.MATH, depends_on=("c1",))) is None
    assert restate_chunk(Chunk("c1", APPLES, Operation.MATH, context="My apples are green.")) is None


async def test_the_peers_are_asked_the_restated_question_program_aided(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    for node in nodes:  # first match wins: this reply goes before the cluster's "Question:" one
        node.engine.replies = {"What is 3 plus 5 minus 2?": "3 + 5 - 2", **node.engine.replies}
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as swarm:
        answer = await swarm.ask(APPLES, synthesize=False)
        (trace,) = answer.chunks
        assert trace.chunk.text == "What is 3 plus 5 minus 2?" and trace.vote.answer == "6"
        assert any("direct arithmetic" in note for note in answer.notes)
        prompts = [p for n in nodes for p in n.engine.prompts]
        assert prompts and all("What is 3 plus 5 minus 2?" in p and "eat 2" not in p for p in prompts)
        # Without program aid the word problem goes to the peers as the user wrote it.
        plain = await swarm.ask(APPLES, program_aided=False, synthesize=False)
        assert plain.chunks[0].chunk.text == APPLES
