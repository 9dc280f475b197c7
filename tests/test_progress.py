"""``dellm ask``'s output (cli/progress.py): stdout holds exactly the answer when piped; a rejected synthesis is marked.

The events are scripted (no network): what a question whose synthesis was
rejected, or accepted, streams to :func:`show_progress`.
"""

from __future__ import annotations

import io

from rich.console import Console

from dellm_p2p.cli.progress import REPLACED_MARK, VOID_MARK, show_progress
from dellm_p2p.coordinator.events import (
    ChunkPlanned,
    ChunkTrace,
    ChunkVoted,
    Final,
    PeerFailed,
    SwarmAnswer,
    SynthesisToken,
)
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation, VoteResult

CHUNKS = [Chunk("c1", "What is 2 plus 2?", Operation.MATH), Chunk("c2", "Name a colour.", Operation.LOOKUP)]
FALLBACK = "4\n\nBlue"


class ScriptedSwarm:
    """Streams a fixed list of events, as ``Swarm.stream`` would for one question."""

    def __init__(self, events):
        self.events = events

    async def stream(self, question: str):
        for event in self.events:
            yield event


def events(synthesis: list[str], final_text: str, *, failed_first: bool = False) -> list:
    votes = [VoteResult("majority", a, Candidate("p1", a, a, a), 1.0) for a in ("4", "blue")]
    out = [ChunkPlanned(c) for c in CHUNKS] + [ChunkVoted(c.id, v) for c, v in zip(CHUNKS, votes, strict=True)]
    if failed_first:
        out += [SynthesisToken("p9", "Half a sen"), PeerFailed("synthesis", "p9", "connection lost")]
    out += [SynthesisToken("p1", t) for t in synthesis]
    answer = SwarmAnswer("q", final_text, [ChunkTrace(c) for c in CHUNKS], synthesizer=None, notes=["left out c1"])
    return [*out, Final(answer)]


def consoles(terminal: bool) -> tuple[Console, io.StringIO, Console]:
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=terminal, width=200, highlight=False, soft_wrap=True)
    err = Console(file=io.StringIO(), force_terminal=False, width=200)
    return out, buffer, err


async def test_piped_stdout_is_exactly_the_answer_when_the_synthesis_is_replaced():
    out, buffer, err = consoles(terminal=False)
    await show_progress(ScriptedSwarm(events(["The answer ", "is 5."], FALLBACK, failed_first=True)), "q", out, err)
    assert buffer.getvalue() == FALLBACK + "\n"


async def test_piped_stdout_is_exactly_the_kept_synthesis():
    out, buffer, err = consoles(terminal=False)
    await show_progress(ScriptedSwarm(events(["It is 4 ", "and blue."], "It is 4 and blue.")), "q", out, err)
    assert buffer.getvalue() == "It is 4 and blue.\n"


async def test_on_a_terminal_a_rejected_synthesis_is_marked_before_the_answer():
    out, buffer, err = consoles(terminal=True)
    await show_progress(ScriptedSwarm(events(["The answer ", "is 5."], FALLBACK, failed_first=True)), "q", out, err)
    text = buffer.getvalue()
    assert VOID_MARK in text and REPLACED_MARK in text
    # The void text comes before its mark, the rejected synthesis before the answer's mark, the answer last.
    assert text.index("Half a sen") < text.index(VOID_MARK) < text.index("is 5.") < text.index(REPLACED_MARK)
    assert text.rstrip().endswith("Blue")


async def test_on_a_terminal_a_kept_synthesis_is_not_marked():
    out, buffer, err = consoles(terminal=True)
    await show_progress(ScriptedSwarm(events(["It is 4 ", "and blue."], "It is 4 and blue.")), "q", out, err)
    assert REPLACED_MARK not in buffer.getvalue() and "It is 4 and blue." in buffer.getvalue()
