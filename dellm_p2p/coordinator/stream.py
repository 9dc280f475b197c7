"""One question as an async stream of events: the single door every surface goes through.

:class:`~dellm_p2p.swarm.Swarm` (the Python API, ``dellm ask`` and ``dellm
chat``) and the HTTP gateway of a node (:mod:`dellm_p2p.http`) both answer
with :func:`stream_question`, each with its own peer table, pool and
fitness book.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from ..client import PeerError
from ..membership import FitnessBook
from ..peer_table import PeerTable
from ..pool import PeerPool
from .admission import LOCAL_KEY, Admission
from .errors import AllPeersFailedError, DeadlineError, SwarmError
from .events import Event, Final, SwarmAnswer
from .pipeline import AskOptions, QuestionRun


async def stream_question(
    question: str,
    options: AskOptions,
    *,
    coordinator_id: str,
    table: PeerTable,
    pool: PeerPool,
    fitness: FitnessBook,
    history: Sequence[Mapping[str, str]] = (),
    admission: Admission | None = None,
    client: str = LOCAL_KEY,
    on_answer: Callable[[SwarmAnswer], Awaitable[None]] | None = None,
) -> AsyncIterator[Event]:
    """Run one :class:`QuestionRun` in a task and yield its events, ending with :class:`Final`.

    ``question`` must already be checked (:func:`~.pipeline.check_question`)
    and ``options`` validated. Closing the iterator early (or cancelling the
    consumer) cancels the run, whose peer requests then send ``cancel`` so
    the peers abort their generations.

    With an ``admission`` queue (the coordinator's, shared by its questions)
    the question takes a ticket under the client key ``client`` before it
    starts: its chunks wait there for free slots, fairly across keys, within
    ``options.timeout_s``, and their redundancy adapts to the load
    (:mod:`.admission`).

    ``on_answer`` is awaited with the answer before :class:`Final` is
    yielded (e.g. :meth:`dellm_p2p.learn.records.RecordStore.record_answer`,
    which keeps the consensus reached per chunk; it must not raise).

    Raises:
        QueueFullError: the admission queue is full (before any event).
        DeadlineError: ``options.timeout_s`` passed.
        NoPeersError, AllPeersFailedError, SwarmError: as raised by the pipeline
            (a peer's :class:`PeerError` surfaces as :class:`AllPeersFailedError`).
    """
    ticket = admission.ticket(client) if admission is not None else None
    queue: asyncio.Queue = asyncio.Queue()
    run = QuestionRun(
        question, options, coordinator_id=coordinator_id, table=table, pool=pool,
        fitness=fitness, emit=queue.put, history=history, ticket=ticket,
    )  # fmt: skip
    task = asyncio.create_task(run.run())
    if ticket is not None:
        task.add_done_callback(lambda _: ticket.close())
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (event := await queue.get()) is not None:
            yield event
        try:
            answer = task.result()
        except TimeoutError:
            raise DeadlineError(f"no answer within {options.timeout_s:g} s") from None
        except BaseExceptionGroup as group:  # a chunk failed inside the pipeline's task group
            raise as_swarm_error(first_leaf(group)) from None
        except PeerError as exc:
            raise as_swarm_error(exc) from None
        if on_answer is not None:
            await on_answer(answer)
        yield Final(answer)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def as_swarm_error(exc: BaseException) -> BaseException:
    """``exc`` as the user sees it: a peer error becomes :class:`AllPeersFailedError`, a timeout a deadline."""
    if isinstance(exc, SwarmError):
        return exc
    if isinstance(exc, PeerError):
        return AllPeersFailedError(str(exc))
    if isinstance(exc, TimeoutError):
        return DeadlineError(str(exc) or "a deadline passed")
    return exc
