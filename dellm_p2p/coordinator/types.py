"""Typed values passed between the coordinator stages.

decompose → :class:`Chunk`; route → :class:`Assignment`; stream and
assemble → :class:`Candidate`; vote → :class:`VoteResult`; reward →
:class:`~dellm_p2p.coordinator.reward.RewardRecord`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Operation(StrEnum):
    """What a chunk asks for, by keywords (the DELLM design's operation classes)."""

    MATH = "MATH"
    LOOKUP = "LOOKUP"  # look up or search for facts
    COMPARE = "COMPARE"
    GENERATE = "GENERATE"  # write, create, summarize: open-ended text
    GENERAL = "GENERAL"


@dataclass(frozen=True)
class Chunk:
    """One sub-question of a user's question.

    Attributes:
        id: ``c1``, ``c2``, … in question order.
        text: the sub-question as the user wrote it (trimmed).
        operation: its :class:`Operation`.
        complexity: 0 (trivial) … 1 (hard), from length and operation.
        depends_on: ids of earlier chunks whose answers this one uses
            (e.g. "…, then find savings accounts paying that much").
        context: what earlier turns of the conversation said that this
            chunk refers to ("My favourite number is 7." for "what is my
            favourite number plus 3?"), quoted in its prompt; empty when
            it refers to nothing earlier
            (:func:`~dellm_p2p.coordinator.decompose.with_conversation`).
    """

    id: str
    text: str
    operation: Operation = Operation.GENERAL
    complexity: float = 0.5
    depends_on: tuple[str, ...] = ()
    context: str = ""


@dataclass(frozen=True)
class Assignment:
    """One request of a chunk to one peer.

    Attributes:
        chunk_id: the chunk.
        peer_id: the peer's node id.
        url: the peer's ``ws://`` URL.
        samples: completions asked of this peer in one request (vLLM's
            ``n``): more than 1 when fewer peers than the redundancy exist.
        score: the routing score that chose it (lower is better).
        greedy: the chunk's greedy anchor (temperature 0, one sample), see
            :func:`~dellm_p2p.coordinator.vote.apply_anchor`.
    """

    chunk_id: str
    peer_id: str
    url: str
    samples: int = 1
    score: float = 0.0
    greedy: bool = False


@dataclass
class Candidate:
    """One answer to one chunk from one peer (one sample).

    Attributes:
        peer_id: the peer that produced it.
        text: the full reply.
        answer: the answer it commits to, folded for comparison (the vote
            key); ``None`` when the reply commits to nothing (empty, garbage).
        display: that answer as shown to the user.
        logprobs: natural-log probability of each sampled token.
        latency_ms: request wall time seen by the coordinator [ms].
        first_token_ms: time to first token seen by the coordinator [ms].
        fitness: the peer's fitness when the vote ran, in [0, 1].
        sample: index of the sample within its request.
        greedy: this is the chunk's greedy anchor reply (temperature 0).
        expression: for a program-aided MATH reply, the arithmetic expression
            whose value is ``answer`` (:mod:`~dellm_p2p.coordinator.program`);
            ``None`` otherwise.
        model: the model the peer announced (``None`` when unknown).
        weight: the ballot's weight in the plurality vote, the learned
            reliability of its model for the chunk's kind
            (:func:`~dellm_p2p.coordinator.vote.model_weight`); 1.0 when all
            ballots count alike (one model, or nothing learned yet).
    """

    peer_id: str
    text: str
    answer: str | None = None
    display: str = ""
    logprobs: list[float] = field(default_factory=list)
    latency_ms: float = 0.0
    first_token_ms: float | None = None
    fitness: float = 0.5
    sample: int = 0
    greedy: bool = False
    expression: str | None = None
    model: str | None = None
    weight: float = 1.0

    @property
    def confidence(self) -> float | None:
        """Geometric-mean token probability, exp(mean logprob), in (0, 1]; ``None`` without logprobs."""
        values = [v for v in self.logprobs if not math.isnan(v)]
        if not values:
            return None
        return math.exp(sum(values) / len(values))


@dataclass
class VoteResult:
    """The outcome of voting on one chunk's candidates.

    Attributes:
        strategy: the strategy used.
        answer: the winning vote key (``None`` when no candidate committed to an answer).
        winner: the candidate chosen to represent the winning answer.
        agreement: share of candidates whose answer is the winner's, in [0, 1].
        scores: score per answer key (strategy-specific scale; higher wins).
        candidate_scores: score per candidate, in input order.
        decided: True when no outstanding candidate could change the winner.
        anchored: True when the greedy anchor decided because no answer had a
            strict plurality (see :func:`~dellm_p2p.coordinator.vote.apply_anchor`).
    """

    strategy: str
    answer: str | None
    winner: Candidate | None
    agreement: float
    scores: dict[str, float] = field(default_factory=dict)
    candidate_scores: list[float] = field(default_factory=list)
    decided: bool = True
    anchored: bool = False
