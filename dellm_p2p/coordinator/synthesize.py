"""Synthesize: one LLM combines the chunks' voted answers into one coherent answer.

The prompt follows the aggregate-and-synthesize step of Mixture-of-Agents
(Wang et al., 2024, "Mixture-of-Agents Enhances Large Language Model
Capabilities"): the model sees the user's question and the answers gathered
for its parts, and writes one answer. Kept short and plain: the default
model has 135M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Chunk, VoteResult

SYSTEM_PROMPT = (
    "You combine answers from several assistants into one clear, correct reply. "
    "Use the given answers; do not invent new facts."
)


def synthesis_messages(question: str, chunks: Sequence[Chunk], votes: dict[str, VoteResult]) -> list[dict[str, str]]:
    """Chat messages asking for one answer that covers every chunk.

    Args:
        question: the user's question.
        chunks: the chunks in order.
        votes: vote result per chunk id (a chunk without a winner is listed as unanswered).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    lines = [f"Question: {question.strip()}", "", "Answers to its parts:"]
    for number, chunk in enumerate(chunks, 1):
        vote = votes.get(chunk.id)
        answer = vote.winner.text.strip() if vote and vote.winner else "(no answer)"
        lines.append(f"{number}. {chunk.text}\n   Answer: {answer}")
    lines += ["", "Write one short, coherent answer to the question using these answers."]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def fallback_answer(chunks: Sequence[Chunk], votes: dict[str, VoteResult]) -> str:
    """The chunk winners one per line: what the user gets when no peer can synthesize."""
    parts = []
    for chunk in chunks:
        vote = votes.get(chunk.id)
        answer = vote.winner.text.strip() if vote and vote.winner else "(no answer)"
        parts.append(answer if len(chunks) == 1 else f"{chunk.text}: {answer}")
    return "\n".join(parts)
