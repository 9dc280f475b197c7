"""``dellm chat``: a conversation with the swarm in the terminal.

Each line you type is asked with the conversation so far as context
(:meth:`dellm_p2p.swarm.Swarm.stream` with ``history``), with the same live
progress and low-agreement line as ``dellm ask``; the answer streams on
stdout, and a blank line ends each turn. With piped input each question is
echoed on stdout (``you> …``) above its answer, so the transcript reads as
on a terminal. ``/reset`` forgets the conversation, ``/exit`` (or Ctrl-D) quits.
Ctrl-C cancels the answer being written (the peers abort it) and keeps the
conversation; at the prompt it quits with exit code 130.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

from rich.console import Console

from ..client import PeerError
from ..coordinator.errors import SwarmError
from ..coordinator.events import Event, Final
from .progress import show_progress

HELP = "/reset forgets the conversation, /exit or Ctrl-D quits, Ctrl-C cancels an answer"
#: Starts the prompt on a terminal, and each question echoed on stdout when the input is piped.
TURN_PREFIX = "you> "

LineReader = Callable[[str], Awaitable[str | None]]


class _Turn:
    """What :func:`show_progress` streams from: one question with the conversation so far; keeps its answer."""

    def __init__(self, swarm, history: list[dict[str, str]]):
        self.swarm, self.history = swarm, history
        self.answer = None

    async def stream(self, question: str) -> AsyncIterator[Event]:
        async for event in self.swarm.stream(question, history=self.history):
            if isinstance(event, Final):
                self.answer = event.answer
            yield event


def stdin_reader() -> LineReader:
    """Read lines with :func:`input` (line editing on a terminal) without blocking the event loop.

    Each read runs in a daemon thread: stdin cannot be read asynchronously
    with line editing, and a daemon thread left blocked in ``input()`` does
    not hold up the exit (``asyncio.to_thread`` would). ``None`` at end of input.
    """

    async def read(prompt: str) -> str | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()

        def work() -> None:
            try:
                line: str | None = input(prompt)
            except (EOFError, OSError, ValueError):
                line = None
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(line))

        threading.Thread(target=work, name="dellm-chat-stdin", daemon=True).start()
        return await future

    return read


async def repl(
    swarm,
    out: Console,
    err: Console,
    *,
    system: str | None = None,
    read_line: LineReader | None = None,
) -> int:
    """Run the conversation until ``/exit`` or end of input; returns the exit code (130 after Ctrl-C at the prompt).

    Args:
        swarm: a started :class:`~dellm_p2p.swarm.Swarm`.
        out, err: where answers and progress go.
        system: a system message that starts every conversation.
        read_line: reads one line (``None`` at end of input); default stdin.
    """
    read_line = read_line or stdin_reader()
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    prompt = TURN_PREFIX if sys.stdin.isatty() else ""
    loop = asyncio.get_running_loop()
    answering: asyncio.Task | None = None
    quit_now = asyncio.Event()
    user_cancelled = False

    def on_sigint() -> None:
        nonlocal user_cancelled
        if answering is not None and not answering.done():
            user_cancelled = True
            answering.cancel()
        else:
            quit_now.set()

    if sys.stdin.isatty():
        err.print(f"[dim]dellm chat: {HELP}[/]")
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        while True:
            reading = asyncio.ensure_future(read_line(prompt))
            quitting = asyncio.ensure_future(quit_now.wait())
            await asyncio.wait({reading, quitting}, return_when=asyncio.FIRST_COMPLETED)
            quitting.cancel()
            if not reading.done():
                reading.cancel()
                err.print()
                return 130
            line = reading.result()
            if line is None:  # Ctrl-D
                if prompt:
                    err.print()
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history = list(base)
                err.print("[dim](conversation reset)[/]")
                continue
            if text.startswith("/"):
                err.print(f"unknown command {text.split()[0]}: {HELP}", markup=False)
                continue
            if not prompt:  # piped: the transcript shows each question above its answer, as a terminal does
                out.print(f"{TURN_PREFIX}{text}", markup=False, highlight=False)
            turn = _Turn(swarm, history)
            user_cancelled = False
            answering = asyncio.create_task(show_progress(turn, text, out, err))
            try:
                await answering
            except asyncio.CancelledError:
                if not user_cancelled:
                    raise  # the REPL itself is being cancelled
                err.print("[yellow](answer cancelled)[/]")
                continue
            except (SwarmError, PeerError) as exc:
                err.print(f"dellm: error: {exc}", markup=False)
                continue
            finally:
                answering = None
            out.print()  # a blank line ends the turn
            if turn.answer is not None:
                history += [{"role": "user", "content": text}, {"role": "assistant", "content": turn.answer.text}]
    finally:
        loop.remove_signal_handler(signal.SIGINT)
