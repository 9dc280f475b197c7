"""Live progress of ``dellm ask``: chunks, peers per chunk, votes, agreement, then the answer."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..coordinator.events import (
    CandidateReady,
    ChunkPlanned,
    ChunkRouted,
    ChunkVoted,
    Final,
    PeerFailed,
    SynthesisToken,
)


class _Board:
    """What the live table shows, per chunk."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def table(self) -> Table:
        table = Table(title="dellm ask", expand=False)
        for column in ("chunk", "op", "text", "peers", "answers", "vote", "agreement"):
            table.add_column(column, overflow="fold")
        for chunk_id, row in self.rows.items():
            table.add_row(
                chunk_id, row["op"], row["text"], ", ".join(p[:8] for p in row["peers"]) or "…",
                str(row["answers"]) + (f" ({row['failed']} failed)" if row["failed"] else ""),
                row["vote"], row["agreement"],
            )  # fmt: skip
        return table


async def show_progress(swarm, question: str, out: Console, err: Console) -> None:
    """Run ``swarm.stream(question)`` with a live table on stderr, the answer on stdout.

    When stderr is not a terminal (piped, a log file) a live table cannot
    redraw in place, and its last frame runs into the next line: each status
    is then printed as a line of its own instead.

    When stdout is not a terminal (``dellm ask … > answer.txt``) it holds
    exactly the final answer: a synthesis is not streamed there, since the
    coordinator may still reject it (it left out a voted answer, or its peer
    failed). On a terminal the synthesis streams, and a rejected one is
    followed by a marked line on stdout saying that the text above is void
    (:data:`REPLACED_MARK`), then the answer that replaces it.
    """
    board = _Board()
    streaming = False
    streamed: list[str] = []  # synthesis text of the current synthesizer
    plain = not err.is_terminal
    live_text = out.is_terminal  # stream synthesis tokens to stdout only where a reader sees them live
    live_display = _NoLive() if plain else Live(board.table(), console=err, refresh_per_second=8, transient=False)
    with live_display as live:
        async for event in swarm.stream(question):
            if plain:
                _status_line(event, board, err)
            match event:
                case ChunkPlanned(chunk=c):
                    board.rows[c.id] = dict(op=c.operation.value, text=c.text[:60], peers=[], answers=0, failed=0,
                                            vote="", agreement="")  # fmt: skip
                case ChunkRouted(chunk_id=cid, assignments=assignments):
                    board.rows[cid]["peers"] += [
                        a.peer_id + (f"×{a.samples}" if a.samples > 1 else "") for a in assignments
                    ]
                case CandidateReady(chunk_id=cid):
                    board.rows[cid]["answers"] += 1
                case PeerFailed(chunk_id=cid, peer_id=peer, reason=reason):
                    if cid in board.rows:
                        board.rows[cid]["failed"] += 1
                    if streaming and cid == "synthesis":  # the text so far is void; the next peer starts over
                        if live_text and streamed:
                            out.print()
                            out.print(f"[bold yellow]{VOID_MARK}[/]")
                        streamed.clear()
                    err.print(f"[yellow]peer {peer[:8]} failed on {cid}: {reason}[/]")
                case ChunkVoted(chunk_id=cid, result=result):
                    board.rows[cid]["vote"] = (result.winner.display if result.winner else "(none)")[:40]
                    board.rows[cid]["agreement"] = f"{result.agreement:.0%}" + (" (greedy)" if result.anchored else "")
                    if (warning := low_agreement(cid, result)) is not None:
                        err.print(f"[yellow]{warning}[/]", highlight=False)
                case SynthesisToken(text=text):
                    if not streaming:
                        live.stop()
                        streaming = True
                        err.print("[dim]synthesizing…[/]")
                    if live_text:
                        out.print(text, end="", markup=False)
                    streamed.append(text)
                case Final(answer=answer):
                    live.update(board.table())
                    shown = live_text and "".join(streamed).strip()
                    if shown and shown == answer.text:
                        out.print()
                    elif shown:  # synthesis failed or dropped a vote after streaming: the fallback follows
                        out.print()
                        out.print(f"[bold yellow]{REPLACED_MARK}[/]")
                        out.print(answer.text, markup=False)
                    else:
                        live.stop()
                        out.print(answer.text, markup=False)
                    _summary(answer, err)
            live.update(board.table())


#: The line on a terminal's stdout after a streamed synthesis the coordinator did not keep.
REPLACED_MARK = "── the synthesized text above was rejected (the note below says why); the answer: ──"
#: The line on a terminal's stdout after a synthesis whose peer failed mid-way (the next peer starts over).
VOID_MARK = "── the text above is void (its peer failed); starting over: ──"

#: Below this share of agreeing answers ``dellm ask`` warns on stderr. Chosen from measurement
#: (``scripts/calibrate.py``, docs/results.md, issue 24; default model, k = 5, capitals and a held-out
#: three-operation set, 76 questions): of the thresholds 30-100 %, 50 % had the best F1 as a detector of
#: wrong answers (0.89: precision 88 %, recall 91 %).
LOW_AGREEMENT = 0.5
#: Below this share (and at or over :data:`LOW_AGREEMENT`) a milder note: on capitals, 60 % agreement was
#: right 5 times of 9 ("Sydney"), so a split vote is worth a word though not a warning.
SPLIT_AGREEMENT = 0.7
#: How often answers were right in that measurement [share]: under 50 % 6 of 48, from 50 % to under 70 % 10 of 14.
RIGHT_WHEN_LOW = 0.13
RIGHT_WHEN_SPLIT = 0.71


def low_agreement(chunk_id: str, result) -> str | None:
    """A line for stderr when few of a chunk's answers back its winner, else ``None``.

    Under :data:`LOW_AGREEMENT`: ``"low agreement on c1: 1 of 5 answers agree (answers this split were
    right 13 % of the time in testing); the greedy answer was kept"``; under :data:`SPLIT_AGREEMENT`:
    ``"split vote on c1: 3 of 5 answers agree (answers this split were right 71 % of the time in
    testing)"``. The share is what such an agreement meant when measured (:data:`RIGHT_WHEN_LOW`,
    :data:`RIGHT_WHEN_SPLIT`); the last part says when the greedy anchor decided.
    """
    total = len(result.candidate_scores)
    if not total or result.agreement >= SPLIT_AGREEMENT:
        return None
    low = result.agreement < LOW_AGREEMENT
    agreeing = round(result.agreement * total)
    line = (
        f"{'low agreement' if low else 'split vote'} on {chunk_id}: {agreeing} of {total} answers agree "
        f"(answers this split were right {RIGHT_WHEN_LOW if low else RIGHT_WHEN_SPLIT:.0%} of the time in testing)"
    )
    if result.anchored:
        line += "; the greedy answer was kept"
    return line


class _NoLive:
    """Stands in for :class:`rich.live.Live` when statuses go out as lines."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def stop(self) -> None:
        pass


def _status_line(event, board: _Board, err: Console) -> None:
    """One plain line for an event that changes the table (before the board records it)."""
    match event:
        case ChunkPlanned(chunk=c):
            line = f"{c.id} {c.operation.value}: {c.text[:60]}"
        case ChunkRouted(chunk_id=cid, assignments=assignments):
            peers = ", ".join(a.peer_id[:8] + (f"×{a.samples}" if a.samples > 1 else "") for a in assignments)
            line = f"{cid}: asking {peers}"
        case CandidateReady(chunk_id=cid):
            line = f"{cid}: answer {board.rows[cid]['answers'] + 1 if cid in board.rows else 1} in"
        case ChunkVoted(chunk_id=cid, result=result):
            winner = (result.winner.display if result.winner else "(none)")[:40]
            line = f"{cid}: voted {winner!r}, agreement {result.agreement:.0%}"
        case _:
            return
    err.print(line, markup=False, highlight=False)


def _summary(answer, err: Console) -> None:
    rewards = ", ".join(f"{r.node_id[:8]} {r.reward:+.3f}" for r in answer.rewards)
    who = f"synthesized by {answer.synthesizer[:8]}" if answer.synthesizer else "winner returned as is"
    if not answer.synthesizer and len(answer.chunks) > 1:
        who = "chunk answers listed"
    for note in answer.notes:
        err.print(f"[yellow]note: {note}[/]")
    err.print(
        f"[dim]{len(answer.chunks)} chunk(s), {who}, {answer.total_ms / 1000:.1f} s; rewards: {rewards or 'none'}[/]"
    )
