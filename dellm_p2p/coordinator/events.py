"""Events streamed by :meth:`dellm_p2p.swarm.Swarm.stream`, and the final answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol import RewardRecord
from .types import Assignment, Candidate, Chunk, VoteResult


@dataclass(frozen=True)
class ChunkPlanned:
    """The question was decomposed; one event per chunk, in order."""

    chunk: Chunk


@dataclass(frozen=True)
class ChunkRouted:
    """A chunk was sent to these peers (also after a re-route, with the new ones)."""

    chunk_id: str
    assignments: tuple[Assignment, ...]


@dataclass(frozen=True)
class PeerToken:
    """A text delta from one peer's sample for a chunk."""

    chunk_id: str
    peer_id: str
    sample: int
    text: str


@dataclass(frozen=True)
class PeerFailed:
    """A peer failed or timed out on a chunk.

    ``chunk_id`` is ``synthesis`` for the synthesis step: the
    :class:`SynthesisToken` text streamed so far is then void, and the next
    peer's tokens (if any) start the answer over.
    """

    chunk_id: str
    peer_id: str
    reason: str


@dataclass(frozen=True)
class CandidateReady:
    """One sample finished and its answer was extracted."""

    chunk_id: str
    candidate: Candidate


@dataclass(frozen=True)
class ChunkVoted:
    """A chunk's vote is decided."""

    chunk_id: str
    result: VoteResult
    cancelled_stragglers: int = 0


@dataclass(frozen=True)
class SynthesisToken:
    """A text delta of the final answer as the synthesizing peer writes it."""

    peer_id: str
    text: str


@dataclass
class ChunkTrace:
    """Everything that happened to one chunk."""

    chunk: Chunk
    assignments: list[Assignment] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    vote: VoteResult | None = None
    rewards: dict[str, float] = field(default_factory=dict)
    stragglers_cancelled: int = 0
    elapsed_ms: float = 0.0
    redundancy: int = 0  # answers asked (k): the question's redundancy, less under load (admission)
    queued_ms: float = 0.0  # time the chunk waited in the coordinator's admission queue [ms]


@dataclass
class SwarmAnswer:
    """The network's answer to one question, with its full trace.

    Attributes:
        question: the question as asked.
        text: the answer.
        chunks: per-chunk trace (assignments, candidates, vote, rewards).
        synthesizer: node id of the peer that synthesized, ``None`` when a
            single chunk's winner was returned as is (or synthesis fell back).
        rewards: reward records issued and gossiped.
        fitness: fitness per node id after the rewards, as this coordinator sees it.
        total_ms: wall time of the whole question [ms].
        notes: one line per failure that was recovered from in a way the
            user should know, e.g. ``synthesis failed (...); the chunk
            answers are listed as voted``. Empty when all went to plan.
        usage: tokens every peer request of the question consumed
            (``prompt_tokens``, ``completion_tokens``; stragglers and failed
            synthesis tries included, see :class:`~.pipeline.QuestionRun`).
    """

    question: str
    text: str
    chunks: list[ChunkTrace]
    synthesizer: str | None = None
    rewards: list[RewardRecord] = field(default_factory=list)
    fitness: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def agreements(self) -> dict[str, float]:
        """Agreement per chunk id, in [0, 1] (voted chunks only)."""
        return {t.chunk.id: t.vote.agreement for t in self.chunks if t.vote is not None}

    @property
    def confidence(self) -> float:
        """One figure for the whole answer, in [0, 1]: the lowest chunk agreement (share of a chunk's answers
        that back its winner), since the answer is only as sure as its least agreed part; 0.0 when no chunk
        was voted."""
        return min(self.agreements.values(), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready trace (``dellm ask --json``)."""
        from dataclasses import asdict

        data = asdict(self)
        for trace, raw in zip(self.chunks, data["chunks"], strict=True):
            raw["chunk"]["operation"] = trace.chunk.operation.value
            for cand, raw_cand in zip(trace.candidates, raw["candidates"], strict=True):
                raw_cand["confidence"] = cand.confidence
                raw_cand.pop("logprobs", None)
        data["rewards"] = [r.model_dump(mode="json") for r in self.rewards]  # signatures as hex
        data["agreements"] = self.agreements
        data["confidence"] = self.confidence
        return data


@dataclass(frozen=True)
class Final:
    """The last event: the answer."""

    answer: SwarmAnswer


Event = ChunkPlanned | ChunkRouted | PeerToken | PeerFailed | CandidateReady | ChunkVoted | SynthesisToken | Final
