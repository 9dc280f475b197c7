"""Never worse than one node: the greedy anchor, a final answer that keeps the vote, the low-agreement line."""

from __future__ import annotations

import math

import pytest

from dellm_p2p.cli.progress import RIGHT_WHEN_LOW, RIGHT_WHEN_SPLIT, low_agreement
from dellm_p2p.coordinator.pipeline import AskOptions, with_anchor
from dellm_p2p.coordinator.synthesize import fallback_answer, reply_text, synthesis_messages, unkept_answers
from dellm_p2p.coordinator.types import Assignment, Candidate, Chunk, Operation, VoteResult
from dellm_p2p.coordinator.vote import STRATEGIES, apply_anchor, is_decided, majority, vote, weighted


def cand(answer: str | None, *, greedy: bool = False, conf: float = 0.5, text: str | None = None) -> Candidate:
    return Candidate(
        peer_id="p",
        text=text if text is not None else f"It is {answer}.",
        answer=answer,
        display=(answer or "").title(),
        logprobs=[math.log(conf)],
        greedy=greedy,
    )


SYNC = [s for s in STRATEGIES if s != "judge"]


# ------------------------------------------------------------------ the anchor rule


@pytest.mark.parametrize("strategy", SYNC)
def test_all_distinct_the_greedy_reply_wins(strategy):
    candidates = [cand("lyon"), cand("paris", greedy=True), cand("nice", conf=0.9)]
    result = apply_anchor(vote(candidates, strategy), candidates)
    assert result.answer == "paris" and result.winner is candidates[1] and result.anchored
    assert result.agreement == pytest.approx(1 / 3)


@pytest.mark.parametrize("strategy", SYNC)
def test_a_tie_goes_to_the_greedy_reply(strategy):
    candidates = [cand("lyon"), cand("lyon"), cand("paris", greedy=True), cand("paris"), cand("nice")]
    result = apply_anchor(vote(candidates, strategy), candidates)
    assert result.answer == "paris" and result.winner.greedy and result.anchored


def test_a_tie_without_the_anchor_among_the_leaders_still_goes_to_it():
    candidates = [cand("lyon"), cand("lyon"), cand("nice"), cand("nice"), cand("paris", greedy=True)]
    result = apply_anchor(majority(candidates), candidates)
    assert result.answer == "paris" and result.anchored


def test_a_strict_plurality_of_samples_beats_the_anchor():
    candidates = [cand("paris", greedy=True), cand("lyon"), cand("lyon")]
    result = apply_anchor(majority(candidates), candidates)
    assert result.answer == "lyon" and not result.anchored and not result.winner.greedy
    assert result.agreement == pytest.approx(2 / 3)


def test_the_anchor_represents_a_winning_cluster_it_belongs_to():
    candidates = [cand("lyon", conf=0.99), cand("paris", greedy=True, conf=0.6), cand("paris", conf=0.9)]
    result = apply_anchor(majority(candidates), candidates)
    assert result.answer == "paris" and result.winner is candidates[1] and not result.anchored


def test_no_candidate_committed_to_an_answer_the_greedy_reply_wins():
    candidates = [cand(None, text="Hmm."), cand(None, greedy=True, text="I am not sure."), cand(None)]
    result = apply_anchor(weighted(candidates), candidates)
    assert result.answer is None and result.winner is candidates[1] and result.anchored
    assert result.agreement == 0.0


def test_a_greedy_reply_without_an_answer_loses_to_agreeing_samples_only_on_strict_plurality():
    one = [cand(None, greedy=True), cand("lyon")]
    assert apply_anchor(majority(one), one).answer == "lyon"  # 1 ballot against none: strict
    two = [cand(None, greedy=True), cand("lyon"), cand("nice")]
    result = apply_anchor(majority(two), two)
    assert result.answer is None and result.winner is two[0]


def test_with_one_candidate_the_swarm_is_one_greedy_node():
    only = [cand("paris", greedy=True)]
    result = apply_anchor(weighted(only), only)
    assert result.answer == "paris" and result.winner is only[0] and result.agreement == 1.0


def test_without_an_anchor_the_result_is_unchanged():
    candidates = [cand("lyon"), cand("paris")]
    result = majority(candidates)
    assert apply_anchor(result, candidates) is result


def test_early_stop_waits_while_the_anchor_could_still_tie():
    arrived = [cand("lyon"), cand("nice")]  # the anchor is outstanding
    assert not is_decided(majority(arrived).scores, 1)
    arrived = [cand("lyon"), cand("lyon")]
    assert is_decided(majority(arrived).scores, 1)  # 2 against at most 1: decided
    assert not is_decided(majority(arrived).scores, 2)


def test_with_anchor_splits_the_best_peers_samples():
    a = Assignment("c1", "A", "ws://a", samples=3)
    b = Assignment("c1", "B", "ws://b", samples=1)
    anchor, rest, other = with_anchor([a, b])
    assert (anchor.peer_id, anchor.samples, anchor.greedy) == ("A", 1, True)
    assert (rest.peer_id, rest.samples, rest.greedy) == ("A", 2, False)
    assert other == b
    assert [x.greedy for x in with_anchor([b])] == [True]
    assert with_anchor([]) == []


def test_ask_options_validate_the_new_settings():
    from dellm_p2p.coordinator.errors import QuestionError

    assert AskOptions().checked().anchor
    with pytest.raises(QuestionError):
        AskOptions(top_p=0).checked()


# ------------------------------------------------- the final answer keeps the vote


def voted(chunk_id: str, winner: Candidate) -> VoteResult:
    return VoteResult("majority", winner.answer, winner, 1.0, candidate_scores=[1.0])


CHUNKS = [
    Chunk("c1", "Calculate 10% interest on $1000", Operation.MATH),
    Chunk("c2", "find the capital of France", Operation.LOOKUP),
]


def votes_for(math_text: str = "10% * 1000", capital: str = "Paris") -> dict[str, VoteResult]:
    math_winner = Candidate("p", math_text, answer="100", display="100", expression=math_text)
    city = Candidate("q", f"The capital of France is {capital}.", answer=capital.lower(), display=capital)
    return {"c1": voted("c1", math_winner), "c2": voted("c2", city)}


def test_reply_text_shows_the_computation_of_a_program_aided_reply():
    votes = votes_for()
    assert reply_text(votes["c1"].winner) == "10% * 1000 = 100"
    invented = Candidate("p", "Paris.\nQuestion: and Spain?\nMadrid.", answer="paris")
    assert reply_text(invented) == "Paris."


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("The interest is $100, and the capital of France is Paris.", []),
        ("You earn 100 dollars; Paris is the capital.", []),
        ("The interest is $10.1, and the capital of France is Paris.", ["c1"]),
        ("The interest is $100 and the capital is Lyon.", ["c2"]),
        ("I cannot help with that.", ["c1", "c2"]),
        ("The interest is 1,000.", ["c1", "c2"]),
    ],
)
def test_unkept_answers(text, missing):
    assert unkept_answers(text, CHUNKS, votes_for()) == missing


def test_open_ended_answers_are_not_checked():
    essay = Candidate("p", "x", answer="a long answer about savings accounts and rates", display="long answer about it")
    votes = {"c2": voted("c2", essay)}
    assert unkept_answers("Something else entirely.", CHUNKS[1:], votes) == []
    phrase = Candidate("p", "x", answer="often determined by a", display="often determined by a")
    assert unkept_answers("Something else entirely.", CHUNKS[1:], {"c2": voted("c2", phrase)}) == []


def test_fallback_composes_one_section_per_chunk_without_echo_or_numbering():
    text = fallback_answer(CHUNKS, votes_for())
    assert text == (
        "Calculate 10% interest on $1000\n10% * 1000 = 100\n\n"
        "find the capital of France\nThe capital of France is Paris."
    )
    question = "Calculate 10% interest on $1000 then find the capital of France"
    assert question not in text and "1." not in text
    assert fallback_answer(CHUNKS[:1], votes_for()) == "10% * 1000 = 100"
    assert "(no answer)" in fallback_answer(CHUNKS, {"c1": votes_for()["c1"]})


def test_synthesis_prompt_lists_the_voted_replies_as_bullets():
    messages = synthesis_messages("Q?", CHUNKS, votes_for())
    user = messages[-1]["content"]
    assert "- Calculate 10% interest on $1000: 10% * 1000 = 100" in user
    assert "\n1." not in user


# ------------------------------------------------------------ the low-agreement line


def test_low_agreement_line():
    candidates = [cand("lyon"), cand("paris", greedy=True), cand("nice")]
    result = apply_anchor(majority(candidates), candidates)
    assert low_agreement("c1", result) == (
        f"low agreement on c1: 1 of 3 answers agree (answers this split were right {RIGHT_WHEN_LOW:.0%} of the time "
        "in testing); the greedy answer was kept"
    )
    agreeing = [cand("paris", greedy=True), cand("paris"), cand("nice")]  # 2 of 3: a split vote, noted
    assert low_agreement("c1", apply_anchor(majority(agreeing), agreeing)).startswith(
        f"split vote on c1: 2 of 3 answers agree (answers this split were right {RIGHT_WHEN_SPLIT:.0%}"
    )
    # 3 of 5 (60 %): on capitals such answers were right 5 times of 9, so they are noted too (issue 24).
    three = [cand("sydney", greedy=True), cand("sydney"), cand("sydney"), cand("canberra"), cand("perth")]
    assert low_agreement("c1", apply_anchor(majority(three), three)).startswith("split vote on c1: 3 of 5")
    four = [*three[:3], cand("sydney"), cand("perth")]
    assert low_agreement("c1", apply_anchor(majority(four), four)) is None
    assert "1 of 4 answers agree" in low_agreement("c2", majority([cand("a"), cand("b"), cand("c"), cand("d")]))


# ------------------------------------------- end to end over real websockets (SIMULATED engines)

from .test_swarm import cluster  # noqa: E402, F401  (the three-node fixture)


async def _ask(bootstrap: str, question: str, **options):
    from dellm_p2p.swarm import Swarm

    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        return await swarm.ask(question, **options)


async def test_swarm_keeps_the_greedy_reply_when_the_samples_all_differ(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    for node, cities in zip(nodes, ("Lyon.|Nice.", "Brest.|Lille.", "Metz.|Tours."), strict=True):
        node.engine.replies = {"capital": "The capital of France is Paris."}
        node.engine.sampled_replies = {"capital": "|".join(f"It is {c}" for c in cities.split("|"))}
    answer = await _ask(bootstrap, "What is the capital of France?", redundancy=5)
    trace = answer.chunks[0]
    assert len(trace.candidates) == 5 and sum(c.greedy for c in trace.candidates) == 1
    assert trace.vote.anchored and trace.vote.answer == "paris"
    assert answer.text == "The capital of France is Paris." and answer.synthesizer is None
    assert answer.confidence == pytest.approx(0.2) and answer.agreements == {"c1": pytest.approx(0.2)}
    temperatures = [t for node in nodes for t in node.engine.temperatures]
    assert temperatures.count(0.0) == 1 and all(t == AskOptions().temperature for t in temperatures if t)


async def test_swarm_follows_a_strict_plurality_of_samples_against_the_greedy_reply(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    for node in nodes:
        node.engine.replies = {"capital": "The capital of France is Paris."}
        node.engine.sampled_replies = {"capital": "It is Lyon."}
    answer = await _ask(bootstrap, "What is the capital of France?", redundancy=5)
    vote = answer.chunks[0].vote
    assert not vote.anchored and vote.answer == "lyon" and answer.text == "It is Lyon."


async def test_with_k_1_the_swarm_is_one_greedy_node(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    for node in nodes:
        node.engine.replies = {"capital": "The capital of France is Paris."}
        node.engine.sampled_replies = {"capital": "It is Lyon."}
    answer = await _ask(bootstrap, "What is the capital of France?", redundancy=1)
    assert [c.greedy for c in answer.chunks[0].candidates] == [True]
    assert answer.text == "The capital of France is Paris."
    assert [t for node in nodes for t in node.engine.temperatures] == [0.0]


async def test_program_aided_math_votes_on_the_computed_value(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    for node in nodes:
        node.engine.replies = {"math expression": "17 + 25 = 32"}  # right expression, wrong arithmetic
    answer = await _ask(bootstrap, "What is 17 + 25?")
    vote = answer.chunks[0].vote
    assert vote.answer == "42" and vote.agreement == 1.0
    assert answer.text == "17 + 25 = 42"
    assert all("Write this as a math expression" in p for node in nodes for p in node.engine.prompts)
