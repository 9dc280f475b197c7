"""Vote on one chunk's candidates: which answer do the peers agree on?

Every strategy takes ``Sequence[Candidate]`` whose ``answer`` is already the
vote key from :func:`~dellm_p2p.coordinator.extract.extract_answer`
(``None`` = the reply committed to nothing; such candidates never vote but
count in ``agreement``'s denominator) and returns a
:class:`~dellm_p2p.coordinator.types.VoteResult`:

* ``answer``: the winning key (a cluster representative, see below);
  ``None`` when no candidate has an answer (empty list, all ``None``).
* ``winner``: the representative candidate of the winning answer: highest
  confidence (:data:`NEUTRAL_CONFIDENCE` without logprobs), then fitness,
  then lowest latency, then earliest in the input.
* ``agreement``: share of *all* candidates whose (clustered) key is the
  winning one, in [0, 1].
* ``scores``: per key, in order of first appearance (scale per strategy).
* ``candidate_scores``: per candidate in input order — the score of the key
  it backs (0.0 for ``None``); for ``ranking`` its own multi-factor score;
  for ``judge`` 1.0 when the judge chose its answer, else 0.0.
* ``decided``: from the ``outstanding`` keyword (replies still expected):
  True when they cannot change the winner, see :func:`is_decided`.

Clustering: keys of open-ended replies (GENERATE) rarely match exactly, so
every strategy first maps each key to a cluster representative with
:func:`cluster_keys` (token Jaccard similarity ≥ ``cluster_threshold``,
default 0.6). Short entity keys rarely merge: a one-word key (and any
number) only with itself, a two-word key only with a three-word key that
contains it ("andorra vella" / "andorra la vella", 2/3).

Ties between keys are broken deterministically, in this order: higher
score, more votes, higher sum of confidence, higher sum of fitness, earliest
first appearance in the input. Scores are compared rounded to 9 decimals,
so float summation order cannot break a tie arbitrarily.

The greedy anchor (:func:`apply_anchor`, applied by the coordinator to
every strategy): one candidate per chunk is the best peer's greedy reply
(temperature 0); when no answer has a strict plurality of ballots — a tie,
all answers distinct, or no candidate committed to an answer — the greedy
reply wins. This is self-consistency (Wang et al. 2022, "Self-Consistency
Improves Chain of Thought Reasoning in Language Models": sample several
replies, keep the most frequent answer) with greedy decoding as the
fallback where the samples do not agree. With one candidate the swarm is
exactly one greedy node; measured on capitals, a plurality of samples alone
scored below one greedy reply at k = 3 (docs/results.md).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dellm_p2p.coordinator.types import Candidate, VoteResult

__all__ = [
    "DEFAULT_CLUSTER_THRESHOLD",
    "JUDGE_OPTION_WORDS",
    "JUDGE_PROMPT",
    "NEUTRAL_CONFIDENCE",
    "STRATEGIES",
    "apply_anchor",
    "borda",
    "cluster_keys",
    "is_decided",
    "jaccard",
    "judge_vote",
    "majority",
    "model_weight",
    "ranking",
    "vote",
    "weighted",
]

log = logging.getLogger(__name__)

STRATEGIES = ("majority", "weighted", "borda", "ranking", "judge")
#: Confidence used for a candidate without logprobs: the midpoint of (0, 1],
#: so a missing measurement neither helps nor hurts (never an invented value).
NEUTRAL_CONFIDENCE = 0.5
DEFAULT_CLUSTER_THRESHOLD = 0.6
#: Words of each answer shown to the judge (open-ended answers can be long;
#: the default model has a 2,048-token context).
JUDGE_OPTION_WORDS = 60

#: The judge's prompt; ``{question}`` and ``{options}`` (lines "1. …") are
#: filled in. Simple English: the judge may be the 135M default model.
JUDGE_PROMPT = (
    "Question: {question}\n"
    "Possible answers:\n"
    "{options}\n"
    "Which answer is correct? Reply with the number of the best answer only."
)

_ROUND = 9  # decimals kept when comparing float scores for ties


# ----------------------------------------------------------------------- clustering


def jaccard(a: str, b: str) -> float:
    """Token Jaccard similarity |A ∩ B| / |A ∪ B| of two folded keys, in [0, 1].

    Tokens are whitespace-separated words; two empty keys are identical (1.0).
    """
    if a == b:
        return 1.0
    ta, tb = set(a.split()), set(b.split())
    union = ta | tb
    return len(ta & tb) / len(union) if union else 1.0


def cluster_keys(candidates: Sequence[Candidate], threshold: float = DEFAULT_CLUSTER_THRESHOLD) -> dict[str, str]:
    """Map each distinct answer key to its cluster representative key.

    Greedy single-link-to-representative clustering: keys are visited most
    frequent first (ties: first appearance); a key joins the representative
    it is most similar to (:func:`jaccard`, earliest representative on ties)
    if that similarity is ≥ ``threshold``, else it becomes a representative
    itself. So the representative is the most common phrasing of its
    cluster, and near-identical long answers ("the cat sat on the mat" /
    "the cat sat on a mat") count as one answer.

    Args:
        candidates: candidates; ``None`` answers are skipped.
        threshold: similarity needed to merge, in (0, 1]; 1.0 merges only
            keys with identical token sets.

    Returns:
        ``{key: representative}`` for every distinct non-``None`` key, in
        order of first appearance.

    Raises:
        ValueError: ``threshold`` outside (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"cluster threshold must be in (0, 1], got {threshold!r}")
    counts: dict[str, int] = {}
    for candidate in candidates:
        if candidate.answer is not None:
            counts[candidate.answer] = counts.get(candidate.answer, 0) + 1
    first_seen = {key: index for index, key in enumerate(counts)}
    representatives: list[str] = []
    mapping: dict[str, str] = {}
    for key in sorted(counts, key=lambda k: (-counts[k], first_seen[k])):
        best, best_similarity = None, -1.0
        for representative in representatives:
            similarity = jaccard(key, representative)
            if similarity >= threshold and similarity > best_similarity:
                best, best_similarity = representative, similarity
        if best is None:
            representatives.append(key)
            best = key
        mapping[key] = best
    return {key: mapping[key] for key in counts}


# -------------------------------------------------------------------------- helpers


def _confidence(candidate: Candidate, neutral: float = NEUTRAL_CONFIDENCE) -> float:
    confidence = candidate.confidence
    return neutral if confidence is None else confidence


def _fitness(candidate: Candidate) -> float:
    # Clamped so that one ballot weighs at most 1 (the bound is_decided relies on).
    return min(max(candidate.fitness, 0.0), 1.0)


@dataclass
class _Tally:
    """Candidates grouped by clustered key (keys in order of first appearance)."""

    keys: list[str | None]  # clustered key per candidate
    members: dict[str, list[int]]  # key → candidate indices

    @property
    def counts(self) -> dict[str, float]:
        return {key: float(len(indices)) for key, indices in self.members.items()}


def _tally(candidates: Sequence[Candidate], threshold: float) -> _Tally:
    mapping = cluster_keys(candidates, threshold)
    keys = [None if c.answer is None else mapping[c.answer] for c in candidates]
    members: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            members.setdefault(key, []).append(index)
    return _Tally(keys, members)


def _best_key(candidates: Sequence[Candidate], tally: _Tally, scores: Mapping[str, float]) -> str:
    """The winning key: score, then votes, Σ confidence, Σ fitness, earliest (see module doc)."""
    order = {key: position for position, key in enumerate(tally.members)}

    def rank(key: str) -> tuple[float, int, float, float, int]:
        indices = tally.members[key]
        return (
            round(scores[key], _ROUND),
            len(indices),
            round(sum(_confidence(candidates[i]) for i in indices), _ROUND),
            round(sum(_fitness(candidates[i]) for i in indices), _ROUND),
            -order[key],
        )

    return max(tally.members, key=rank)


def _representative(candidates: Sequence[Candidate], indices: list[int]) -> Candidate:
    """Highest confidence, then fitness, then lowest latency; earliest on full ties (max keeps the first)."""
    best = max(
        indices,
        key=lambda i: (_confidence(candidates[i]), _fitness(candidates[i]), -candidates[i].latency_ms),
    )
    return candidates[best]


def _empty(strategy: str, candidates: Sequence[Candidate], outstanding: int) -> VoteResult:
    return VoteResult(
        strategy=strategy,
        answer=None,
        winner=None,
        agreement=0.0,
        scores={},
        candidate_scores=[0.0] * len(candidates),
        decided=outstanding == 0,
    )


def _result(
    strategy: str,
    candidates: Sequence[Candidate],
    tally: _Tally,
    scores: dict[str, float],
    candidate_scores: list[float],
    winner_key: str,
    decided: bool,
) -> VoteResult:
    indices = tally.members[winner_key]
    return VoteResult(
        strategy=strategy,
        answer=winner_key,
        winner=_representative(candidates, indices),
        agreement=len(indices) / len(candidates),
        scores=scores,
        candidate_scores=candidate_scores,
        decided=decided,
    )


def _check_outstanding(outstanding: int) -> None:
    if outstanding < 0:
        raise ValueError(f"outstanding must be >= 0, got {outstanding!r}")


# ------------------------------------------------------------------------ strategies


def majority(
    candidates: Sequence[Candidate],
    *,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    outstanding: int = 0,
) -> VoteResult:
    """Plurality vote: each candidate with an answer casts its ballot, the largest total wins.

    A ballot counts :attr:`Candidate.weight` (1.0 unless the coordinator set
    its model's reliability, :func:`model_weight`), so with equal weights
    this is the plain plurality and ``scores`` are vote counts. Ties: more
    ballots, then higher sum of confidence (neutral 0.5 without logprobs),
    then higher sum of fitness, then the key that appeared first in the input.

    Args:
        candidates: candidates with extracted answers; weights in (0, 1].
        cluster_threshold: see :func:`cluster_keys`.
        outstanding: replies still expected (sets ``decided``, exact bound as no ballot weighs more than 1).

    Raises:
        ValueError: bad ``cluster_threshold`` or negative ``outstanding``.
    """
    _check_outstanding(outstanding)
    tally = _tally(candidates, cluster_threshold)
    if not tally.members:
        return _empty("majority", candidates, outstanding)
    scores = _ballots(candidates, tally)
    winner = _best_key(candidates, tally, scores)
    per_candidate = [scores[k] if k is not None else 0.0 for k in tally.keys]
    return _result("majority", candidates, tally, scores, per_candidate, winner, is_decided(scores, outstanding))


def _ballots(candidates: Sequence[Candidate], tally: _Tally) -> dict[str, float]:
    """Summed ballot weight per clustered key (plain counts when every weight is 1)."""
    return {key: sum(candidates[i].weight for i in indices) for key, indices in tally.members.items()}


#: Answer classes assumed by :func:`model_weight`: a model right with probability p spreads its
#: wrong answers over (classes - 1) others, so p = 1 / classes is a coin toss among them. Open answers
#: (a capital, a name) have many wrong alternatives: replayed on capitals (194 questions, Gemma 3 270M
#: and SmolLM2 mixed, docs/results.md), 4 classes weighed the weaker model's ballots at 0.17 of the
#: stronger one's and lost the splits they settle right (k = 7: 64.9 % against 66.0 % unweighted);
#: 30 weighs them at about half and scored as the plain plurality or better (66.0 %, 67.0 %).
MODEL_WEIGHT_CLASSES = 30
#: Smallest ballot weight (a model estimated no better than chance still breaks ties among equals).
MIN_MODEL_WEIGHT = 0.05


def model_weight(reliability: float, classes: int = MODEL_WEIGHT_CLASSES) -> float:
    """The log-odds ballot weight of a model that is right with probability ``reliability``.

    ``w = ln(p / (1 − p)) + ln(classes − 1)``, at least :data:`MIN_MODEL_WEIGHT`:
    the optimal weights of a weighted majority of independent voters (Nitzan
    and Paroush 1982, "Optimal decision rules in uncertain dichotomous choice
    situations", Int. Econ. Rev. 23(2); the ``ln(classes − 1)`` term extends
    them to a plurality over ``classes`` symmetric alternatives, Ben-Yashar and
    Paroush 2001), with ``p`` estimated without labels from agreement with the
    consensus, as Dawid and Skene (1979, "Maximum likelihood estimation of
    observer error-rates using the EM algorithm", JRSS C 28(1)) estimate
    annotators. ``p`` is clamped to [0.01, 0.99]. The coordinator divides the
    weights of a chunk's ballots by the largest among them, so each is in
    (0, 1] and a swarm of one model votes as a plain plurality.

    Raises:
        ValueError: ``classes`` < 2.
    """
    if classes < 2:
        raise ValueError("classes must be at least 2")
    p = min(max(reliability, 0.01), 0.99)
    return max(MIN_MODEL_WEIGHT, math.log(p / (1.0 - p)) + math.log(classes - 1))


def weighted(
    candidates: Sequence[Candidate],
    *,
    neutral_confidence: float = NEUTRAL_CONFIDENCE,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    outstanding: int = 0,
) -> VoteResult:
    """Weighted vote, the DELLM design's fitness × confidence.

    Each candidate with an answer votes with weight ``fitness × confidence``,
    in [0, 1]: fitness clamped to [0, 1], confidence = exp(mean token
    logprob) (:attr:`Candidate.confidence`), or ``neutral_confidence`` when
    the candidate has no logprobs. ``scores``: sum of weights per key. A
    confident minority beats an unconfident majority exactly when its summed
    weight is larger. Ties as in :func:`majority` (votes first).

    Args:
        candidates: candidates with extracted answers.
        neutral_confidence: confidence assumed without logprobs, in [0, 1].
        cluster_threshold: see :func:`cluster_keys`.
        outstanding: replies still expected (sets ``decided``; exact, as each
            ballot weighs at most 1).

    Raises:
        ValueError: ``neutral_confidence`` outside [0, 1], bad
            ``cluster_threshold`` or negative ``outstanding``.
    """
    _check_outstanding(outstanding)
    if not 0.0 <= neutral_confidence <= 1.0:
        raise ValueError(f"neutral_confidence must be in [0, 1], got {neutral_confidence!r}")
    tally = _tally(candidates, cluster_threshold)
    if not tally.members:
        return _empty("weighted", candidates, outstanding)
    weights = [_fitness(c) * _confidence(c, neutral_confidence) for c in candidates]
    scores = {key: sum(weights[i] for i in indices) for key, indices in tally.members.items()}
    winner = _best_key(candidates, tally, scores)
    per_candidate = [scores[k] if k is not None else 0.0 for k in tally.keys]
    return _result("weighted", candidates, tally, scores, per_candidate, winner, is_decided(scores, outstanding))


def borda(
    candidates: Sequence[Candidate],
    *,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    outstanding: int = 0,
) -> VoteResult:
    """Borda count (de Borda, 1781) over ballots derived from each answer.

    With ``m`` distinct keys, each candidate with an answer casts a ballot
    ranking all keys: its own first, then the others by :func:`jaccard`
    similarity to its own, most similar first. Positions earn ``m-1, m-2,
    …, 0`` points; keys tied in similarity share the average of the points
    of the positions they span (the usual Borda treatment of ties, which
    keeps input order out of it). ``scores``: total points per key; each
    ballot hands out ``m(m-1)/2`` points. An answer close to many others
    gains from their ballots — a soft consensus for near-misses.

    ``decided`` uses the :func:`majority` count bound as an approximation
    (one more ballot can move Borda totals by up to ``m`` points).

    Raises:
        ValueError: bad ``cluster_threshold`` or negative ``outstanding``.
    """
    _check_outstanding(outstanding)
    tally = _tally(candidates, cluster_threshold)
    if not tally.members:
        return _empty("borda", candidates, outstanding)
    keys = list(tally.members)
    m = len(keys)
    ballot_points: dict[str, dict[str, float]] = {}  # own key → points given to each key
    for own in keys:
        points = {own: float(m - 1)}
        others = sorted((k for k in keys if k != own), key=lambda k: -jaccard(own, k))
        position = 1
        while others:
            similarity = jaccard(own, others[0])
            group = [k for k in others if jaccard(own, k) == similarity]
            # Positions position … position+len-1 share their mean points.
            shared = sum(m - 1 - p for p in range(position, position + len(group))) / len(group)
            for k in group:
                points[k] = shared
            others = others[len(group) :]
            position += len(group)
        ballot_points[own] = points
    scores = dict.fromkeys(keys, 0.0)
    for key in tally.keys:
        if key is not None:
            for other, points in ballot_points[key].items():
                scores[other] += points
    winner = _best_key(candidates, tally, scores)
    per_candidate = [scores[k] if k is not None else 0.0 for k in tally.keys]
    decided = is_decided(tally.counts, outstanding)
    return _result("borda", candidates, tally, scores, per_candidate, winner, decided)


def ranking(
    candidates: Sequence[Candidate],
    *,
    w_agreement: float = 0.5,
    w_confidence: float = 0.2,
    w_fitness: float = 0.2,
    w_latency: float = 0.1,
    neutral_confidence: float = NEUTRAL_CONFIDENCE,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    outstanding: int = 0,
) -> VoteResult:
    """Multi-factor ranking of candidates; the key of the best candidate wins.

    Per candidate with an answer::

        score = w_agreement·agreement + w_confidence·confidence
              + w_fitness·fitness + w_latency·(1 − latency / max latency)

    agreement = share of all candidates with the same (clustered) key;
    confidence from logprobs (``neutral_confidence`` without); fitness
    clamped to [0, 1]; max latency over candidates with an answer (all
    latencies 0 → latency term 1). Each factor is in [0, 1], so with the
    defaults (0.5, 0.2, 0.2, 0.1; sum 1) the score is in [0, 1]. ``scores``:
    per key, its best candidate's score; ``candidate_scores``: each
    candidate's own score (0.0 without an answer). Ties as in
    :func:`majority`. ``decided`` uses the :func:`majority` count bound as
    an approximation.

    Raises:
        ValueError: a negative weight, bad ``neutral_confidence`` or
            ``cluster_threshold``, or negative ``outstanding``.
    """
    _check_outstanding(outstanding)
    weights = {
        "w_agreement": w_agreement,
        "w_confidence": w_confidence,
        "w_fitness": w_fitness,
        "w_latency": w_latency,
    }
    for name, value in weights.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if not 0.0 <= neutral_confidence <= 1.0:
        raise ValueError(f"neutral_confidence must be in [0, 1], got {neutral_confidence!r}")
    tally = _tally(candidates, cluster_threshold)
    if not tally.members:
        return _empty("ranking", candidates, outstanding)
    n = len(candidates)
    max_latency = max(candidates[i].latency_ms for indices in tally.members.values() for i in indices)
    per_candidate: list[float] = []
    for candidate, key in zip(candidates, tally.keys, strict=True):
        if key is None:
            per_candidate.append(0.0)
            continue
        latency_score = 1.0 - candidate.latency_ms / max_latency if max_latency > 0 else 1.0
        per_candidate.append(
            w_agreement * len(tally.members[key]) / n
            + w_confidence * _confidence(candidate, neutral_confidence)
            + w_fitness * _fitness(candidate)
            + w_latency * max(latency_score, 0.0)
        )
    scores = {key: max(per_candidate[i] for i in indices) for key, indices in tally.members.items()}
    winner = _best_key(candidates, tally, scores)
    decided = is_decided(tally.counts, outstanding)
    return _result("ranking", candidates, tally, scores, per_candidate, winner, decided)


# ----------------------------------------------------------------------------- judge


def _parse_choice(reply: str, m: int) -> int | None:
    """The first integer in ``reply`` that is in 1..m, or ``None``."""
    for token in re.findall(r"\d+", reply):
        if 1 <= int(token) <= m:
            return int(token)
    return None


def _option_text(candidate: Candidate, key: str) -> str:
    words = (candidate.display or key).split()
    return " ".join(words[:JUDGE_OPTION_WORDS]) + (" …" if len(words) > JUDGE_OPTION_WORDS else "")


async def judge_vote(
    candidates: Sequence[Candidate],
    question: str,
    ask: Callable[[str], Awaitable[str]],
    *,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    outstanding: int = 0,
) -> VoteResult:
    """LLM-as-a-judge: a model picks the best of the distinct answers.

    The distinct (clustered) answers are numbered 1..m in order of first
    appearance, each shown as its representative candidate's ``display``
    (at most :data:`JUDGE_OPTION_WORDS` words), in :data:`JUDGE_PROMPT`.
    The first integer in 1..m in the judge's reply picks the winner ("2",
    "The best is answer 2." → answer 2). On a reply without one
    ("banana", "9" of 3) or when ``ask`` raises, the result is
    :func:`majority`'s with ``strategy="judge(fallback: majority)"``. With
    one distinct answer the judge is not asked. ``scores`` and
    ``candidate_scores``: 1.0 for the chosen answer, 0.0 otherwise.
    ``decided`` uses the :func:`majority` count bound as an approximation.

    Args:
        candidates: candidates with extracted answers.
        question: the chunk's question, shown to the judge.
        ask: sends a prompt to the judge model and returns its text.
        cluster_threshold: see :func:`cluster_keys`.
        outstanding: replies still expected.

    Raises:
        ValueError: bad ``cluster_threshold`` or negative ``outstanding``.
    """
    _check_outstanding(outstanding)
    tally = _tally(candidates, cluster_threshold)
    if not tally.members:
        return _empty("judge", candidates, outstanding)
    keys = list(tally.members)
    choice: int | None = 1
    if len(keys) > 1:
        options = "\n".join(
            f"{number}. {_option_text(_representative(candidates, tally.members[key]), key)}"
            for number, key in enumerate(keys, start=1)
        )
        try:
            reply = await ask(JUDGE_PROMPT.format(question=question.strip(), options=options))
        except Exception as exc:  # a failed judge must not lose the vote
            log.warning("judge failed (%s); falling back to majority", exc)
            reply = ""
        choice = _parse_choice(reply, len(keys))
    if choice is None:
        fallback = majority(candidates, cluster_threshold=cluster_threshold, outstanding=outstanding)
        fallback.strategy = "judge(fallback: majority)"
        return fallback
    chosen = keys[choice - 1]
    scores = {key: 1.0 if key == chosen else 0.0 for key in keys}
    per_candidate = [1.0 if k == chosen else 0.0 for k in tally.keys]
    decided = is_decided(tally.counts, outstanding)
    return _result("judge", candidates, tally, scores, per_candidate, chosen, decided)


# ---------------------------------------------------------------------- greedy anchor


def _anchor_index(candidates: Sequence[Candidate]) -> int | None:
    return next((i for i, c in enumerate(candidates) if c.greedy), None)


def apply_anchor(
    result: VoteResult,
    candidates: Sequence[Candidate],
    *,
    cluster_threshold: float = DEFAULT_CLUSTER_THRESHOLD,
) -> VoteResult:
    """The greedy-anchor rule on top of any strategy's ``result`` (see the module docstring).

    Let the anchor be the first candidate with ``greedy=True``; it casts one
    ballot like any other (measured on capitals, 194 questions, k = 3 / 5 /
    7: counting it as 1.5, 2 or 2.5 ballots was never better than 1,
    docs/results.md). When one clustered key has strictly more ballots (summed
    :attr:`~Candidate.weight`, counts when all are 1) than every
    other, the strategy's result stands — the strategy may still prefer
    another key (``weighted``: a confident minority) — except that a
    winning cluster the anchor belongs to is represented by the anchor's own
    reply. Otherwise (a tie, all distinct, no answer at all) the anchor's key
    wins with the anchor's reply as the winner, ``anchored=True``, and
    ``agreement`` is the share of candidates sharing its key (0.0 when it
    committed to nothing). Without an anchor among the candidates the result
    is returned unchanged.

    Args:
        result: the strategy's vote over ``candidates``.
        candidates: the candidates it voted on.
        cluster_threshold: see :func:`cluster_keys`.

    Returns:
        ``result`` itself when the rule changes nothing, else a changed copy
        (``result`` is never modified).

    Raises:
        ValueError: a bad ``cluster_threshold``.
    """
    anchor = _anchor_index(candidates)
    if anchor is None:
        return result
    tally = _tally(candidates, cluster_threshold)
    ordered = sorted((round(v, _ROUND) for v in _ballots(candidates, tally).values()), reverse=True)
    strict = bool(ordered) and (len(ordered) == 1 or ordered[0] > ordered[1])
    anchor_key = tally.keys[anchor]
    if strict and result.answer is not None:
        if result.answer == anchor_key:
            return replace(result, winner=candidates[anchor])
        return result
    members = tally.members.get(anchor_key, []) if anchor_key is not None else []
    return replace(
        result,
        answer=anchor_key,
        winner=candidates[anchor],
        agreement=len(members) / len(candidates),
        anchored=True,
    )


# ---------------------------------------------------------------------- dispatch etc.

_SYNC = {"majority": majority, "weighted": weighted, "borda": borda, "ranking": ranking}


def vote(candidates: Sequence[Candidate], strategy: str, **kwargs: Any) -> VoteResult:
    """Run a synchronous strategy by name.

    Args:
        candidates: candidates with extracted answers.
        strategy: one of ``majority``, ``weighted``, ``borda``, ``ranking``.
        **kwargs: passed to the strategy (e.g. ``outstanding``,
            ``cluster_threshold``, ranking weights).

    Raises:
        ValueError: an unknown strategy (``"unknown strategy 'x'; choose
            from majority, weighted, borda, ranking, judge"``), or ``judge``,
            which is async: ``await judge_vote(candidates, question, ask)``.
        TypeError: a keyword the strategy does not take.
    """
    if strategy == "judge":
        raise ValueError("strategy 'judge' is async; use `await judge_vote(candidates, question, ask)`")
    function = _SYNC.get(strategy)
    if function is None:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return function(candidates, **kwargs)


_COUNT_SCALED = ("majority", "weighted", "judge(fallback: majority)")


def is_decided(
    counts_or_result: Mapping[str, float] | VoteResult, outstanding: int, *, max_weight: float = 1.0
) -> bool:
    """True when ``outstanding`` more replies cannot change the winner (stop waiting for stragglers).

    The bound: leader > runner-up + outstanding × max_weight, where each
    outstanding reply adds at most ``max_weight`` to one key (1 for a
    majority vote; also 1 for :func:`weighted`, whose weights are
    fitness × confidence ≤ 1). A new key starts from 0, so the runner-up
    bound covers it. With no reply outstanding the vote is always decided
    (ties are broken deterministically). Strict ">": an outstanding reply
    that ties could flip the winner through the tie-break.

    For ``borda``, ``ranking`` and ``judge`` the coordinator uses this
    majority bound on vote counts as an approximation (those strategies
    set ``VoteResult.decided`` that way); clustering of open-ended keys can
    also shift with new replies, so the bound is approximate there too.

    Args:
        counts_or_result: votes (or weights) per key, or a :class:`VoteResult`
            of ``majority``/``weighted`` (its ``scores`` are used).
        outstanding: replies still expected, ≥ 0.
        max_weight: the most one reply can add to a key's score.

    Raises:
        ValueError: negative ``outstanding``, or a result of another
            strategy (its scores are not counts; pass
            ``majority(candidates).scores`` instead).
    """
    _check_outstanding(outstanding)
    if isinstance(counts_or_result, VoteResult):
        if counts_or_result.strategy not in _COUNT_SCALED:
            raise ValueError(
                f"is_decided needs vote counts, not {counts_or_result.strategy!r} scores; "
                "pass majority(candidates).scores"
            )
        counts: Mapping[str, float] = counts_or_result.scores
    else:
        counts = counts_or_result
    if outstanding == 0:
        return True
    ordered = sorted(counts.values(), reverse=True)
    leader = ordered[0] if ordered else 0.0
    runner_up = ordered[1] if len(ordered) > 1 else 0.0
    return leader > runner_up + outstanding * max_weight
