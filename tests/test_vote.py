"""Voting strategies over extracted answers: arithmetic, tie-breaks, edge cases, the judge."""

from __future__ import annotations

import math

import pytest

from dellm_p2p.coordinator.types import Candidate, VoteResult
from dellm_p2p.coordinator.vote import (
    JUDGE_PROMPT,
    NEUTRAL_CONFIDENCE,
    STRATEGIES,
    borda,
    cluster_keys,
    is_decided,
    jaccard,
    judge_vote,
    majority,
    ranking,
    vote,
    weighted,
)

SYNC = {"majority": majority, "weighted": weighted, "borda": borda, "ranking": ranking}


def cand(
    answer: str | None,
    *,
    conf: float | None = None,
    fitness: float = 0.5,
    latency: float = 0.0,
    peer: str = "p",
    display: str | None = None,
) -> Candidate:
    """A candidate whose confidence is exactly ``conf`` (one token of that probability)."""
    return Candidate(
        peer_id=peer,
        text=display or answer or "",
        answer=answer,
        display=display if display is not None else (answer or "").title(),
        logprobs=[] if conf is None else [math.log(conf)],
        latency_ms=latency,
        fitness=fitness,
    )


# --------------------------------------------------------------------- shared edges


@pytest.mark.parametrize("name", list(SYNC))
def test_empty_list(name):
    result = SYNC[name]([])
    assert result == VoteResult(strategy=name, answer=None, winner=None, agreement=0.0)


@pytest.mark.parametrize("name", list(SYNC))
def test_all_none(name):
    result = SYNC[name]([cand(None), cand(None)])
    assert (result.answer, result.winner, result.agreement) == (None, None, 0.0)
    assert result.scores == {} and result.candidate_scores == [0.0, 0.0]


@pytest.mark.parametrize("name", list(SYNC))
def test_single_candidate(name):
    only = cand("paris")
    result = SYNC[name]([only])
    assert (result.answer, result.winner, result.agreement, result.strategy) == ("paris", only, 1.0, name)


@pytest.mark.parametrize("name", list(SYNC))
def test_garbage_mixed_in_counts_in_agreement_only(name):
    candidates = [cand("paris"), cand(None), cand(None), cand("lyon"), cand("paris")]
    result = SYNC[name](candidates)
    assert result.answer == "paris"
    assert result.agreement == pytest.approx(2 / 5)
    assert result.candidate_scores[1] == result.candidate_scores[2] == 0.0


@pytest.mark.parametrize("name", list(SYNC))
def test_outstanding_sets_decided(name):
    # Full weights, so that the weighted bound equals the count bound.
    full = {"conf": 1.0, "fitness": 1.0}
    candidates = [cand("paris", **full), cand("paris", **full), cand("paris", **full), cand("lyon", **full)]
    assert SYNC[name](candidates, outstanding=1).decided  # 3 > 1 + 1
    assert not SYNC[name](candidates, outstanding=2).decided  # 3 > 1 + 2 is false
    assert SYNC[name]([], outstanding=0).decided
    if name == "weighted":
        # Weights 0.25 each (fitness 0.5 × neutral 0.5): 0.75 vs 0.25 + 1 is open.
        assert not weighted([cand("paris")] * 3 + [cand("lyon")], outstanding=1).decided
    assert not SYNC[name]([], outstanding=1).decided


# ------------------------------------------------------------------------- majority


def test_majority_counts():
    result = majority([cand("paris"), cand("paris"), cand("lyon")])
    assert result.answer == "paris"
    assert result.scores == {"paris": 2.0, "lyon": 1.0}
    assert result.candidate_scores == [2.0, 2.0, 1.0]
    assert result.agreement == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        # Equal everything: the key seen first wins, whatever the order.
        ([cand("paris"), cand("lyon")], "paris"),
        ([cand("lyon"), cand("paris")], "lyon"),
        # Sum of confidence decides before order (no logprobs counts as 0.5).
        ([cand("paris"), cand("lyon", conf=0.9)], "lyon"),
        ([cand("paris", conf=0.4), cand("lyon")], "lyon"),
        # Then sum of fitness.
        ([cand("paris", fitness=0.5), cand("lyon", fitness=0.9)], "lyon"),
        # Two low-confidence votes beat one confident vote: counts come first.
        ([cand("paris", conf=0.1), cand("paris", conf=0.1), cand("lyon", conf=1.0)], "paris"),
    ],
)
def test_majority_tie_break(candidates, expected):
    assert majority(candidates).answer == expected


def test_winner_is_most_confident_then_fittest_then_fastest():
    slow = cand("paris", conf=0.8, fitness=0.9, latency=300, peer="slow")
    fast = cand("paris", conf=0.8, fitness=0.9, latency=100, peer="fast")
    unfit = cand("paris", conf=0.8, fitness=0.1, latency=10, peer="unfit")
    unsure = cand("paris", conf=0.3, fitness=1.0, latency=1, peer="unsure")
    assert majority([unsure, slow, unfit, fast]).winner is fast
    assert majority([unsure, unfit]).winner is unfit
    twins = [cand("paris", peer="a"), cand("paris", peer="b")]
    assert majority(twins).winner is twins[0]


# ------------------------------------------------------------------------- weighted


def test_weighted_confident_minority_wins_when_the_math_says_so():
    candidates = [
        cand("lyon", conf=0.2, fitness=0.5),
        cand("lyon", conf=0.2, fitness=0.5),
        cand("paris", conf=0.9, fitness=0.5),
    ]
    result = weighted(candidates)
    assert result.scores == pytest.approx({"lyon": 0.2, "paris": 0.45})
    assert result.answer == "paris"
    assert result.agreement == pytest.approx(1 / 3)
    assert result.candidate_scores == pytest.approx([0.2, 0.2, 0.45])
    assert majority(candidates).answer == "lyon"


def test_weighted_confident_minority_loses_when_the_math_says_so():
    candidates = [cand("lyon", conf=0.4, fitness=1.0) for _ in range(3)] + [cand("paris", conf=0.9, fitness=1.0)]
    result = weighted(candidates)
    assert result.scores == pytest.approx({"lyon": 1.2, "paris": 0.9})
    assert result.answer == "lyon"


def test_weighted_without_logprobs_uses_neutral_confidence():
    candidates = [cand("paris", fitness=0.8), cand("lyon", conf=0.5, fitness=0.6)]
    result = weighted(candidates)
    assert result.scores == pytest.approx({"paris": 0.8 * NEUTRAL_CONFIDENCE, "lyon": 0.3})
    assert weighted(candidates, neutral_confidence=0.25).scores == pytest.approx({"paris": 0.2, "lyon": 0.3})


def test_weighted_geometric_mean_confidence():
    multi = Candidate(peer_id="p", text="", answer="paris", logprobs=[math.log(0.5), math.log(0.8)], fitness=1.0)
    assert weighted([multi]).scores["paris"] == pytest.approx(math.sqrt(0.5 * 0.8))


def test_weighted_tie_is_deterministic():
    # 0.5 × 0.6 = 0.6 × 0.5: equal weight and votes → Σ confidence, then Σ fitness.
    a = cand("paris", conf=0.5, fitness=0.6)
    b = cand("lyon", conf=0.6, fitness=0.5)
    assert weighted([a, b]).answer == "lyon"
    assert weighted([b, a]).answer == "lyon"


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_weighted_rejects_bad_neutral_confidence(bad):
    with pytest.raises(ValueError, match="neutral_confidence"):
        weighted([cand("paris")], neutral_confidence=bad)


# ---------------------------------------------------------------------------- borda


def test_borda_points_by_hand():
    # m = 3 keys; positions earn 2, 1, 0.
    # "paris" ballots (×2): paris 2, "paris france" 1 (Jaccard 1/2), lyon 0.
    # "paris france" ballot: itself 2, paris 1, lyon 0.
    # "lyon" ballot: itself 2, the other two tie at similarity 0 → (1 + 0) / 2 each.
    candidates = [cand("paris"), cand("paris"), cand("paris france"), cand("lyon")]
    result = borda(candidates)
    assert result.scores == {"paris": 5.5, "paris france": 4.5, "lyon": 2.0}
    assert sum(result.scores.values()) == 4 * (2 + 1 + 0)
    assert result.candidate_scores == [5.5, 5.5, 4.5, 2.0]
    assert result.answer == "paris"


def test_borda_can_overrule_plurality():
    # A (×2) vs three mutually similar answers: m = 4, points 3, 2, 1, 0.
    # A ballots: A 3, the rest tie → (2+1+0)/3 = 1 each.  B ballot: B 3, C and D
    # (Jaccard 1/3) tie → 1.5 each, A 0; same for C and D.
    candidates = [cand("alpha"), cand("alpha"), cand("beta gamma"), cand("beta delta"), cand("beta epsilon")]
    result = borda(candidates)
    assert result.scores == {"alpha": 6.0, "beta gamma": 8.0, "beta delta": 8.0, "beta epsilon": 8.0}
    assert result.answer == "beta gamma"  # three-way tie: first seen
    assert majority(candidates).answer == "alpha"


# -------------------------------------------------------------------------- ranking


RANKED = [
    cand("paris", conf=0.8, fitness=0.5, latency=100),
    cand("paris", fitness=0.7, latency=200),  # no logprobs → 0.5
    cand("lyon", conf=1.0, fitness=1.0, latency=50),
]


def test_ranking_default_weights():
    # 0.5·agreement + 0.2·confidence + 0.2·fitness + 0.1·(1 − latency/200)
    expected = [
        0.5 * 2 / 3 + 0.2 * 0.8 + 0.2 * 0.5 + 0.1 * 0.5,
        0.5 * 2 / 3 + 0.2 * 0.5 + 0.2 * 0.7 + 0.1 * 0.0,
        0.5 * 1 / 3 + 0.2 * 1.0 + 0.2 * 1.0 + 0.1 * 0.75,
    ]
    result = ranking(RANKED)
    assert result.candidate_scores == pytest.approx(expected)
    assert result.scores == pytest.approx({"paris": expected[0], "lyon": expected[2]})
    assert result.answer == "paris"
    assert result.winner is RANKED[0]


def test_ranking_weights_change_the_winner():
    result = ranking(RANKED, w_agreement=0.0)
    assert result.candidate_scores == pytest.approx([0.31, 0.24, 0.475])
    assert result.answer == "lyon"
    assert ranking(RANKED, w_agreement=1, w_confidence=0, w_fitness=0, w_latency=0).scores == pytest.approx(
        {"paris": 2 / 3, "lyon": 1 / 3}
    )


def test_ranking_zero_latencies_score_one():
    result = ranking([cand("paris", conf=1.0, fitness=1.0)], w_agreement=0, w_confidence=0, w_fitness=0)
    assert result.candidate_scores == [pytest.approx(0.1)]


def test_ranking_rejects_negative_weight():
    with pytest.raises(ValueError, match="w_latency"):
        ranking(RANKED, w_latency=-1)


# ---------------------------------------------------------------------------- judge


JUDGED = [cand("paris"), cand("paris"), cand("lyon")]


class FakeJudge:
    def __init__(self, reply: str | Exception):
        self.reply = reply
        self.prompts: list[str] = []

    async def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.mark.parametrize("reply", ["2", "The best is answer 2.", " 2\n", "Answer 2 of 2"])
async def test_judge_picks_the_numbered_answer(reply):
    ask = FakeJudge(reply)
    result = await judge_vote(JUDGED, "What is the capital of France?", ask)
    assert result.strategy == "judge"
    assert result.answer == "lyon"
    assert result.winner is JUDGED[2]
    assert result.agreement == pytest.approx(1 / 3)
    assert result.scores == {"paris": 0.0, "lyon": 1.0}
    assert result.candidate_scores == [0.0, 0.0, 1.0]
    assert ask.prompts == [
        JUDGE_PROMPT.format(question="What is the capital of France?", options="1. Paris\n2. Lyon"),
    ]


@pytest.mark.parametrize("reply", ["banana", "9", "0", "", RuntimeError("judge down")])
async def test_judge_falls_back_to_majority(reply):
    result = await judge_vote(JUDGED, "What is the capital of France?", FakeJudge(reply))
    assert result.strategy == "judge(fallback: majority)"
    assert result.answer == "paris"
    assert result.scores == {"paris": 2.0, "lyon": 1.0}


async def test_judge_not_asked_for_one_answer_or_none():
    ask = FakeJudge("2")
    one = await judge_vote([cand("paris"), cand(None), cand("paris")], "q", ask)
    assert (one.strategy, one.answer, one.agreement) == ("judge", "paris", pytest.approx(2 / 3))
    empty = await judge_vote([], "q", ask)
    assert (empty.strategy, empty.answer, empty.winner, empty.agreement) == ("judge", None, None, 0.0)
    assert ask.prompts == []


async def test_judge_truncates_long_options():
    long_text = " ".join(["word"] * 100)
    candidates = [cand("a", display=long_text), cand("b", display="Short")]
    ask = FakeJudge("1")
    await judge_vote(candidates, "q", ask)
    first_option = ask.prompts[0].split("\n")[2]
    assert first_option.startswith("1. word") and first_option.endswith(" …")
    assert len(first_option.split()) == 1 + 60 + 1


# -------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("name", list(SYNC))
def test_vote_dispatches(name):
    candidates = [cand("paris", conf=0.7), cand("lyon", conf=0.9), cand("paris", conf=0.2)]
    assert vote(candidates, name) == SYNC[name](candidates)


def test_vote_passes_keywords():
    assert vote(RANKED, "ranking", w_agreement=0.0).answer == "lyon"


def test_vote_unknown_strategy():
    with pytest.raises(ValueError) as error:
        vote([], "x")
    assert str(error.value) == "unknown strategy 'x'; choose from majority, weighted, borda, ranking, judge"


def test_vote_judge_is_async():
    with pytest.raises(ValueError, match="judge_vote"):
        vote([], "judge")


def test_strategies_listed():
    assert STRATEGIES == ("majority", "weighted", "borda", "ranking", "judge")


# ------------------------------------------------------------------------ is_decided


@pytest.mark.parametrize(
    ("counts", "outstanding", "expected"),
    [
        ({"a": 3.0, "b": 1.0}, 1, True),  # 3 > 1 + 1
        ({"a": 3.0, "b": 1.0}, 2, False),  # 3 = 1 + 2: two more "b" would tie
        ({"a": 2.0}, 1, True),  # a new key can reach at most 1
        ({"a": 1.0}, 1, False),
        ({"a": 2.0, "b": 2.0}, 0, True),  # nothing outstanding: the tie-break decides
        ({}, 0, True),
        ({}, 1, False),
        ({"a": 0.9, "b": 0.2}, 1, False),  # weighted scores: one ballot weighs up to 1
        ({"a": 1.5, "b": 0.2}, 1, True),
    ],
)
def test_is_decided(counts, outstanding, expected):
    assert is_decided(counts, outstanding) is expected


def test_is_decided_on_results():
    candidates = [cand("a"), cand("a"), cand("a"), cand("b")]
    assert is_decided(majority(candidates), 1)
    assert not is_decided(majority(candidates), 2)
    assert is_decided(weighted([cand("a", conf=1.0, fitness=1.0)] * 3), 2)
    with pytest.raises(ValueError, match="majority"):
        is_decided(borda(candidates), 1)
    with pytest.raises(ValueError, match="outstanding"):
        is_decided({"a": 1.0}, -1)


# ------------------------------------------------------------------------ clustering


FOX = "the quick brown fox jumps over the lazy dog"
FOX2 = "the quick brown fox jumped over the lazy dog"
CATS = "cats sleep most of the day in warm places"


def test_jaccard():
    assert jaccard("a b", "a b") == 1.0
    assert jaccard("a b", "b c") == pytest.approx(1 / 3)
    assert jaccard("paris", "lyon") == 0.0
    assert jaccard(FOX, FOX2) == pytest.approx(7 / 9)


def test_cluster_keys_merges_near_identical_long_answers():
    candidates = [cand(FOX), cand(CATS), cand(FOX2), cand(FOX2), cand(None)]
    # FOX2 is the most common phrasing, so it represents the cluster.
    assert cluster_keys(candidates) == {FOX: FOX2, CATS: CATS, FOX2: FOX2}
    assert cluster_keys(candidates, threshold=0.8) == {FOX: FOX, CATS: CATS, FOX2: FOX2}


def test_cluster_keys_leaves_short_keys_apart():
    candidates = [cand("paris"), cand("paris france"), cand("washington"), cand("washington dc")]
    assert cluster_keys(candidates) == {k: k for k in ("paris", "paris france", "washington", "washington dc")}


@pytest.mark.parametrize("bad", [0.0, -1.0, 1.5])
def test_cluster_keys_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        cluster_keys([cand("a")], threshold=bad)


@pytest.mark.parametrize("name", list(SYNC))
def test_strategies_vote_on_clusters(name):
    confident = cand(FOX, conf=0.9)
    candidates = [confident, cand(CATS), cand(FOX2), cand(FOX2)]
    result = SYNC[name](candidates)
    assert result.answer == FOX2
    assert result.agreement == pytest.approx(3 / 4)
    assert result.winner is confident  # the most confident member represents the cluster
    assert SYNC[name](candidates, cluster_threshold=1.0).agreement == pytest.approx(2 / 4)


# ------------------------------------------------------------------ ballots weighted by model reliability


def test_model_weight_is_the_log_odds_of_reliability_with_a_floor():
    from dellm_p2p.coordinator.vote import MIN_MODEL_WEIGHT, model_weight

    assert model_weight(0.9, classes=2) == pytest.approx(math.log(9))
    assert model_weight(0.9) > model_weight(0.6) > model_weight(0.3)
    assert model_weight(0.0, classes=2) == MIN_MODEL_WEIGHT == model_weight(0.01, classes=2)
    assert model_weight(1 / 30) == MIN_MODEL_WEIGHT, "a coin toss among the classes gets the floor"
    with pytest.raises(ValueError):
        model_weight(0.5, classes=1)


def test_weighted_ballots_decide_the_plurality_and_the_anchor_rule():
    from dellm_p2p.coordinator.types import Candidate
    from dellm_p2p.coordinator.vote import apply_anchor

    def ballot(answer, weight, greedy=False):
        return Candidate(peer_id="p", text=answer, answer=answer, weight=weight, greedy=greedy)

    # Two light ballots against one heavy one: the heavy one wins; with equal weights the two do.
    heavy = [ballot("lima", 0.2), ballot("lima", 0.2), ballot("cusco", 1.0, greedy=True)]
    assert majority(heavy).answer == "cusco" and majority(heavy).scores == {"lima": 0.4, "cusco": 1.0}
    assert apply_anchor(majority(heavy), heavy).answer == "cusco"
    equal = [ballot("lima", 1.0), ballot("lima", 1.0), ballot("cusco", 1.0, greedy=True)]
    assert majority(equal).answer == "lima" and not apply_anchor(majority(equal), equal).anchored
    # Equal weight on both sides is a tie: the greedy anchor decides, as with counts.
    tie = [ballot("lima", 0.5), ballot("lima", 0.5), ballot("cusco", 1.0, greedy=True)]
    result = apply_anchor(majority(tie), tie)
    assert result.answer == "cusco" and result.anchored
