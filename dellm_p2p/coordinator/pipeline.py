"""The coordinator pipeline for one question: decompose → route → stream → vote → reward → synthesize.

Chunks whose dependencies are answered run concurrently; each chunk's
requests run concurrently under a per-chunk deadline. A failed or timed-out
peer's samples are re-routed to the next-best peer. Once no outstanding
answer can change a chunk's winner, the question goes on without the
stragglers; they may finish in the background for a grace period
(:attr:`AskOptions.straggler_grace`) and are rewarded against the decided
vote like the others, else they are cancelled (their nodes abort the
generation).

Synthesis fails over too: the best peers that did not fail during this
question are tried in turn (``1 + max_reroutes`` of them), each within what
is left of the question's deadline; when none writes an answer, the chunk
winners are returned joined, with a note in :attr:`SwarmAnswer.notes`. A
question therefore ends with an answer or a one-line error, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..client import PeerError
from ..membership import FitnessBook
from ..peer_table import PeerTable
from ..pool import PeerPool
from ..protocol import Done, SamplingParams, Token
from .admission import Ticket
from .decompose import (
    LLM_DECOMPOSE_PROMPT,
    DecompositionError,
    classify,
    complexity,
    decompose,
    parse_llm_decomposition,
    with_conversation,
)
from .errors import AllPeersFailedError, NoPeersError, QuestionError
from .events import (
    CandidateReady,
    ChunkPlanned,
    ChunkRouted,
    ChunkTrace,
    ChunkVoted,
    Event,
    PeerFailed,
    PeerToken,
    SwarmAnswer,
    SynthesisToken,
)
from .history import DEFAULT_CONTEXT_TOKENS, estimate_tokens, with_history
from .program import candidate_answer
from .prompts import build_prompt
from .restate import restate_chunk
from .reward import chunk_rewards
from .route import RouteWeights, eligible_peers, route, score_peers
from .synthesize import fallback_answer, reply_text, synthesis_messages, unkept_answers
from .types import Assignment, Candidate, Chunk, VoteResult
from .units import unit_vote
from .vote import STRATEGIES, apply_anchor, is_decided, judge_vote, majority, model_weight, vote

log = logging.getLogger(__name__)

SYNTHESIS_RESERVE_S = 0.25  # kept from the question's deadline for the fallback answer [s]


@dataclass(frozen=True)
class AskOptions:
    """How one question is answered.

    Attributes:
        strategy: vote strategy (majority, weighted, borda, ranking, judge).
            Default ``majority`` with the greedy anchor: self-consistency
            (Wang et al. 2022) with a greedy fallback. On capitals (194
            questions, T = 0.7) the anchored majority, weighted and ranking
            votes scored within a question or two of each other, and the
            plurality is the rule a user can check by counting.
        redundancy: answers per chunk (k), the greedy anchor included.
            Default 5: on capitals, one draw of samples anchored at k = 3
            scored 47.4 % against 46.9 % for one greedy node, at k = 5 50.0 %
            (6 questions gained, none lost), at k = 7 49.5 %; ``swarm.ask``
            end to end at k = 5 51.5 % (+9 / −0). See docs/results.md.
        temperature: sampling temperature of the k − 1 sampled chunk answers
            (0 = greedy). 0.7: at k = 5 anchored, T = 0.5 scored 49.0 %.
        top_p: nucleus-sampling mass of the sampled answers, in (0, 1].
        anchor: one of the k answers is the best-ranked peer's greedy reply,
            and it wins when no answer has a strict plurality
            (:func:`~.vote.apply_anchor`); with k = 1 the swarm is one greedy node.
        program_aided: MATH chunks ask for an arithmetic expression that the
            coordinator evaluates (:mod:`.program`), and vote on its value.
        max_tokens: tokens per chunk answer.
        timeout_s: deadline of the whole question [s].
        chunk_timeout_s: deadline of one chunk, re-routes included [s].
        decompose: ``rules``, ``llm`` (falls back to the rules on invalid
            output) or ``none`` (the whole question is one chunk).
        synthesize: let an LLM combine the chunk answers (else they are listed).
        synthesis_max_tokens: tokens of the synthesized answer (at least
            ``max_tokens`` are allowed).
        max_question_chars: longer questions are refused.
        max_reroutes: re-routes per chunk after peer failures.
        weights: routing-score weights.
        straggler_grace: once a chunk's vote is decided, its outstanding
            requests (stragglers) may still run for this many times the time
            the chunk took to decide (within the chunk's deadline), in the
            background: the answer does not wait for them, but each one that
            finishes is rewarded against the decided vote, so routing learns
            from every answer it paid for; the rest are cancelled (0: cancel
            at once). Default 1: in ``scripts/bench_scale.py`` (simulated
            answers of equal length, 3 requests a question) cancelling at
            once rewarded 1.6 of a question's 3 requests (live, N = 20;
            2.0-2.3 with the grace), and in the route-level replay at
            N = 100 the accurate peers' share of the last 200 questions'
            requests was 72 % against 85 % (docs/results.md, issue 17).
            Tokens of stragglers that finish after the answer are not in
            :attr:`SwarmAnswer.usage`.
        straggler_evidence: only stragglers of peers whose fitness rests on
            fewer rewards than this (as this coordinator counts them) get the
            grace; those of proven peers are cancelled at once, since one
            more reward barely moves their posterior. Default 20 (the
            posterior's standard deviation is then about 0.1): in
            ``scripts/bench_scale.py`` at N = 100 live, letting every
            straggler finish cost the 100 simulated nodes 0.15 of the
            machine's 2 cores (their reward records verified by every node)
            and raised latency p99 from 227 to 312 ms (docs/results.md).
        model_weights: in a swarm of different models, each ballot counts
            its model's learned reliability for the chunk's kind
            (:func:`~.vote.model_weight` of the per-(model, kind) posterior,
            :meth:`FitnessBook.model_posterior`); off, every ballot counts 1.
            With one model, or before anything is learned, it changes nothing.
    """

    strategy: str = "majority"
    redundancy: int = 5
    temperature: float = 0.7
    top_p: float = 1.0
    anchor: bool = True
    program_aided: bool = True
    max_tokens: int = 160
    timeout_s: float = 180.0
    chunk_timeout_s: float = 90.0
    decompose: str = "rules"
    synthesize: bool = True
    synthesis_max_tokens: int = 256
    max_question_chars: int = 10_000
    max_reroutes: int = 3
    weights: RouteWeights = field(default_factory=RouteWeights)
    straggler_grace: float = 1.0
    straggler_evidence: int = 20
    model_weights: bool = True

    def checked(self) -> AskOptions:
        """Validate; raises :class:`QuestionError` with a one-line reason."""
        if self.strategy not in STRATEGIES:
            raise QuestionError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.decompose not in ("rules", "llm", "none"):
            raise QuestionError(f"unknown decomposition {self.decompose!r}; choose rules, llm or none")
        if not 1 <= self.redundancy <= 16:
            raise QuestionError("redundancy must be between 1 and 16")
        if not 0 <= self.temperature <= 2:
            raise QuestionError("temperature must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            raise QuestionError("top_p must be in (0, 1]")
        if self.timeout_s <= 0 or self.chunk_timeout_s <= 0 or self.max_tokens < 1 or self.synthesis_max_tokens < 1:
            raise QuestionError("timeouts and max_tokens must be positive")
        if not 0 <= self.straggler_grace <= 100:
            raise QuestionError("straggler_grace must be between 0 and 100")
        if self.straggler_evidence < 0:
            raise QuestionError("straggler_evidence must be at least 0")
        return self


def check_question(question: str, limit: int) -> str:
    """Trimmed question; raises :class:`QuestionError` when empty or over ``limit`` characters."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty")
    if len(question) > limit:
        raise QuestionError(f"the question is {len(question):,} characters; the limit is {limit:,}")
    return question.strip()


def _outcome(task: asyncio.Task) -> object:
    """A finished request task's result (candidates or a failure reason); ``None`` if it raised or was cancelled."""
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def with_anchor(assignments: list[Assignment]) -> list[Assignment]:
    """Make one sample of the first (best-ranked) assignment the greedy anchor.

    ``[A×3, B]`` becomes ``[A greedy, A×2, B]``: the anchor is its own request
    (temperature 0, ``n`` = 1), the rest keep their samples. Empty in, empty out.
    """
    if not assignments:
        return assignments
    first = assignments[0]
    anchor = dataclasses.replace(first, samples=1, greedy=True)
    rest = [dataclasses.replace(first, samples=first.samples - 1)] if first.samples > 1 else []
    return [anchor, *rest, *assignments[1:]]


class QuestionRun:
    """State of one question being answered; :meth:`run` emits events through ``emit``.

    ``history`` holds the conversation's earlier messages (``{"role",
    "content"}``, oldest first): only ``question`` is decomposed, and every
    chunk prompt and the synthesis carry the earlier turns, trimmed oldest
    first to the smallest context window among the chosen peers
    (:mod:`.history`). ``usage`` counts the tokens every peer request of the
    question consumed: prompt tokens from each ``done`` frame (estimated for
    a request cancelled before it), completion tokens from the streamed
    ``token`` frames.
    """

    def __init__(
        self,
        question: str,
        options: AskOptions,
        *,
        coordinator_id: str,
        table: PeerTable,
        pool: PeerPool,
        fitness: FitnessBook,
        emit: Callable[[Event], Awaitable[None]],
        history: Sequence[Mapping[str, str]] = (),
        ticket: Ticket | None = None,
    ):
        self.question = question
        self.ticket = ticket  # the coordinator's admission queue (slots of all its questions, adaptive k)
        self.history = [dict(m) for m in history]
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.options = options
        self.coordinator_id = coordinator_id
        self.table = table
        self.pool = pool
        self.fitness = fitness
        self.emit = emit
        self.load: Counter[str] = Counter()  # requests in flight per peer, from this question
        self.assigned: Counter[str] = Counter()  # chunks routed per peer, to spread the work
        self.traces: dict[str, ChunkTrace] = {}
        self.finished: dict[str, asyncio.Event] = {}
        self.notes: list[str] = []  # what went wrong but was recovered from, for the answer
        self.deadline: float | None = None  # loop time when the question's deadline passes
        self.ended = asyncio.Event()  # set when run() returns or fails; stragglers then stop emitting
        self.rewarded = False  # the chunk rewards were issued (stragglers' rewards follow them)
        self.background: set[asyncio.Task] = set()  # stragglers finishing after their chunk's vote

    async def run(self) -> SwarmAnswer:
        try:
            return await self._run()
        except BaseException:
            for task in self.background:  # a failed or abandoned question keeps nothing running
                task.cancel()
            raise
        finally:
            self.ended.set()

    async def _run(self) -> SwarmAnswer:
        started = time.perf_counter()
        opts = self.options
        async with asyncio.timeout(opts.timeout_s) as scope:
            self.deadline = scope.when()
            chunks = self._restated(with_conversation(await self._decompose(), self.history))
            for chunk in chunks:
                self.traces[chunk.id] = ChunkTrace(chunk)
                self.finished[chunk.id] = asyncio.Event()
                await self.emit(ChunkPlanned(chunk))
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(self._answer_chunk(chunk))
            records = self._reward()
            text, synthesizer = await self._synthesize(chunks)
        return SwarmAnswer(
            question=self.question,
            text=text,
            chunks=[self.traces[c.id] for c in chunks],
            synthesizer=synthesizer,
            rewards=records,
            fitness=self.fitness.snapshot(),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            notes=list(self.notes),
            usage=dict(self.usage),
        )

    # Decompose.

    async def _decompose(self) -> list[Chunk]:
        if self.options.decompose == "none":
            operation = classify(self.question)
            return [Chunk("c1", self.question, operation, complexity(self.question, operation))]
        if self.options.decompose == "llm":
            try:
                reply = await self._ask_one(LLM_DECOMPOSE_PROMPT.format(question=self.question), max_tokens=400)
                return parse_llm_decomposition(reply, self.question)
            except (DecompositionError, PeerError, NoPeersError) as exc:
                log.info("LLM decomposition unusable (%s); using the rules", exc)
        return decompose(self.question)

    def _restated(self, chunks: list[Chunk]) -> list[Chunk]:
        """``chunks`` with each change-of-quantity word problem restated as direct arithmetic (:mod:`.restate`),
        when arithmetic is program-aided; a note says what each restated chunk now asks."""
        if not self.options.program_aided:
            return chunks
        out = []
        for chunk in chunks:
            restated = restate_chunk(chunk)
            if restated is not None:
                self.notes.append(f"{chunk.id} was asked as direct arithmetic: {restated.text!r}")
            out.append(restated or chunk)
        return out

    # Route, stream and vote one chunk.

    async def _answer_chunk(self, chunk: Chunk) -> None:
        trace = self.traces[chunk.id]
        started = time.perf_counter()
        try:
            if self.options.program_aided and (computed := unit_vote(chunk)) is not None:
                trace.vote = computed  # a unit conversion: computed with pint, no peer asked (.units)
                await self.emit(ChunkVoted(chunk.id, computed))
                return
            for dep in chunk.depends_on:
                await self.finished[dep].wait()
            # A dependency's short answer ("100"), not its whole reply: small models lose the thread.
            known = {
                d: v.winner.display or v.winner.text
                for d in chunk.depends_on
                if (v := self.traces[d].vote) and v.winner
            }
            await self._collect(chunk, known, trace)
            if not trace.candidates:
                reasons = "; ".join(f"{peer}: {why}" for peer, why in trace.failures) or "no answer in time"
                raise AllPeersFailedError(f"chunk {chunk.id} got no answer ({reasons})")
            trace.vote = await self._vote(chunk, trace.candidates)
            await self.emit(ChunkVoted(chunk.id, trace.vote, trace.stragglers_cancelled))
        finally:
            trace.elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
            self.finished[chunk.id].set()

    async def _collect(self, chunk: Chunk, known: dict[str, str], trace: ChunkTrace) -> None:
        opts = self.options
        tried: set[str] = set()
        failed: set[str] = set()
        reroutes = 0
        pending: dict[asyncio.Task, Assignment] = {}

        async def dispatch(wanted: int, greedy: bool = False) -> None:
            # Prefer peers not yet used for this chunk; fall back to used ones (more samples), never failed ones.
            peers = self.table.alive()
            load = self.ticket.load if self.ticket is not None else self.load  # every question's, under admission
            fresh = eligible_peers(peers, load, exclude=failed | tried)
            assignments = route(
                chunk,
                peers,
                redundancy=wanted,
                weights=opts.weights,
                load=load,
                assigned=self.assigned,
                exclude=(failed | tried) if fresh else failed,
            )
            if greedy:
                assignments = with_anchor(self._anchor_first(chunk, assignments))
            for a in assignments:
                tried.add(a.peer_id)
                self.assigned[a.peer_id] += 1
                task = asyncio.create_task(self._request(chunk, a, known))
                pending[task] = a
                if self.ticket is not None:
                    self.ticket.hold(task, a)  # its slots are in use until the request ends
            trace.assignments.extend(assignments)
            await self.emit(ChunkRouted(chunk.id, tuple(assignments)))

        await self._dispatch_admitted(trace, dispatch)
        started = time.perf_counter()
        handed_off = 0  # stragglers left to finish in the background
        try:
            async with asyncio.timeout(opts.chunk_timeout_s) as scope:
                while pending:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        assignment = pending.pop(task)
                        outcome = task.result()
                        if isinstance(outcome, str):
                            failed.add(assignment.peer_id)
                            trace.failures.append((assignment.peer_id, outcome))
                            await self.emit(PeerFailed(chunk.id, assignment.peer_id, outcome))
                            if reroutes < opts.max_reroutes:
                                reroutes += 1
                                with contextlib.suppress(NoPeersError):
                                    await dispatch(assignment.samples, greedy=assignment.greedy)
                            continue
                        for candidate in outcome:
                            trace.candidates.append(candidate)
                            await self.emit(CandidateReady(chunk.id, candidate))
                    # The anchor casts one ballot, so the plurality bound covers it: a tie it could
                    # still make keeps the chunk open (a tie goes to the anchor).
                    outstanding = sum(a.samples for a in pending.values())
                    models = [self._model_of(a.peer_id) for a in pending.values()]
                    heaviest = self._weigh(chunk, trace.candidates, models)
                    if (
                        pending
                        and trace.candidates
                        and is_decided(majority(trace.candidates).scores, outstanding, max_weight=heaviest)
                    ):
                        # Stragglers of peers with little evidence finish for their reward; the rest are cancelled.
                        keep = {
                            task: a
                            for task, a in pending.items()
                            if opts.straggler_grace > 0 and self.fitness.counts(a.peer_id)[1] < opts.straggler_evidence
                        }
                        if keep:
                            left = (scope.when() or float("inf")) - asyncio.get_running_loop().time()
                            grace = min(opts.straggler_grace * (time.perf_counter() - started), left)
                            self._finish_later(trace, keep, grace)
                            for task in keep:
                                del pending[task]
                            handed_off = len(keep)
                        break
        except TimeoutError:
            log.info("chunk %s deadline passed with %d answers", chunk.id, len(trace.candidates))
        finally:
            trace.stragglers_cancelled = len(pending) + handed_off
            for task in pending:  # stragglers: cancelling sends `cancel`, the node aborts
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _dispatch_admitted(self, trace: ChunkTrace, dispatch: Callable[..., Awaitable[None]]) -> None:
        """Route the chunk's first requests with its redundancy k: ``redundancy``, or under an admission
        queue what the queue grants (waiting for a free slot within the question's deadline).

        The one place the pipeline decides a chunk's redundancy
        (:func:`~.admission.adaptive_redundancy`); sets ``trace.redundancy``
        and ``trace.queued_ms`` (the wait [ms]). A peer's load report that
        arrives between the grant and the route can show the granted peer
        full: the slots go back and the chunk waits again.
        """
        opts = self.options
        if self.ticket is None:
            trace.redundancy = opts.redundancy
            await dispatch(opts.redundancy, greedy=opts.anchor)
            return
        queued = time.perf_counter()
        while True:
            trace.redundancy = await self.ticket.admit(opts.redundancy)
            trace.queued_ms = round((time.perf_counter() - queued) * 1000, 3)
            try:
                await dispatch(trace.redundancy, greedy=opts.anchor)
                return
            except NoPeersError:
                self.ticket.give_back()
                await asyncio.sleep(0.05)  # never spin: the next report or release decides

    def _finish_later(self, trace: ChunkTrace, stragglers: dict[asyncio.Task, Assignment], grace_s: float) -> None:
        """Let a decided chunk's stragglers run up to ``grace_s`` [s] more, then reward those that answered.

        Runs in the background (the question does not wait); the task is
        tracked by the fitness book, so closing the coordinator waits for it
        briefly and then cancels it. Those still running after the grace are
        cancelled (their nodes abort). Each straggler that answered gets the
        reward :func:`~.reward.chunk_rewards` gives it among all of the
        chunk's answers: the vote is decided, so it cannot change the winner,
        and as the slowest it earns no speed bonus.
        """

        async def finish() -> None:
            try:
                done, _ = await asyncio.wait(stragglers, timeout=max(0.0, grace_s))
            finally:
                for task in stragglers:
                    task.cancel()
                await asyncio.gather(*stragglers, return_exceptions=True)
            await self.ended.wait()
            late_candidates = [c for task in done if isinstance(outcome := _outcome(task), list) for c in outcome]
            if not late_candidates or not self.rewarded or trace.vote is None:
                return
            rewards = chunk_rewards([*trace.candidates, *late_candidates], trace.vote)
            fresh = {peer: rewards[peer] for peer in {c.peer_id for c in late_candidates} - trace.rewards.keys()}
            if fresh:
                self._issue(trace, fresh, late_candidates)

        task = asyncio.get_running_loop().create_task(finish(), name=f"dellm-stragglers-{trace.chunk.id}")
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        self.fitness.track(task)

    async def _request(self, chunk: Chunk, a: Assignment, known: dict[str, str]) -> list[Candidate] | str:
        """Ask one peer for ``a.samples`` answers; returns the candidates, or a one-line failure reason.

        The request takes the form the peer's model wants (:func:`~.prompts.build_prompt`):
        chat messages with the conversation's earlier turns for an instruct model, a few-shot
        completion prompt with stop sequences for a base model.
        """
        opts = self.options
        model = self._model_of(a.peer_id)
        self.load[a.peer_id] += 1
        started = time.perf_counter()
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[float]] = {}
        first: dict[int, float] = {}
        messages: list[dict[str, str]] | None = None
        try:
            client = await self.pool.get(a.url)
            request = build_prompt(chunk, known, model, program_aided=opts.program_aided, history=self.history)
            temperature = 0.0 if a.greedy else opts.temperature
            params = SamplingParams(
                max_tokens=opts.max_tokens,
                temperature=temperature,
                top_p=1.0 if a.greedy else opts.top_p,
                # Greedy decoding gives one answer: n > 1 at temperature 0 is refused by nodes, and its
                # copies would be identical, so one is asked and stands for all a.samples (below).
                n=1 if temperature == 0 else a.samples,
                logprobs=True,
                stop=list(request.stop),
            )
            if request.prompt is not None:
                messages = [{"role": "user", "content": request.prompt}]  # for the token estimate if cancelled
                stream = client.generate(prompt=request.prompt, params=params, timeout_s=opts.chunk_timeout_s)
            else:
                chosen = [x.url for x in self.traces[chunk.id].assignments] if chunk.id in self.traces else [a.url]
                # A chunk that quotes the conversation (Chunk.context) goes without the earlier turns: to them
                # the default 135M model answered "I'm glad to hear that.", to the quote alone "Alice" (issue 24).
                tail = request.messages or []
                messages = tail if chunk.context else self._with_history(tail, opts.max_tokens, chosen)
                stream = client.generate(messages=messages, params=params, timeout_s=opts.chunk_timeout_s)
            async for item in stream:
                if self._count(item):
                    messages = None  # done: its real prompt tokens are counted
                if isinstance(item, Token):
                    texts.setdefault(item.index, []).append(item.text)
                    logprobs.setdefault(item.index, []).extend(item.logprobs or [])
                    first.setdefault(item.index, (time.perf_counter() - started) * 1000)
                    if not self.ended.is_set():  # a straggler finishing after the answer streams to nobody
                        await self.emit(PeerToken(chunk.id, a.peer_id, item.index, item.text))
        except PeerError as exc:
            return str(exc)
        finally:
            self.load[a.peer_id] -= 1
            self._count_unfinished(messages)
        latency = (time.perf_counter() - started) * 1000
        self.table.touch(a.peer_id)
        candidates = []
        for index in range(a.samples):
            asked = index if params.n > 1 else 0  # greedy: the one reply stands for every sample
            text = "".join(texts.get(asked, []))
            answer, display, expression = candidate_answer(text, chunk, opts.program_aided)
            candidates.append(
                Candidate(
                    peer_id=a.peer_id,
                    text=text,
                    answer=answer,
                    display=display,
                    logprobs=logprobs.get(asked, []),
                    latency_ms=round(latency, 3),
                    first_token_ms=round(first[asked], 3) if asked in first else None,
                    fitness=self.fitness.fitness(a.peer_id),
                    sample=index,
                    greedy=a.greedy,
                    expression=expression,
                    model=model,
                )
            )
        return candidates

    def _model_of(self, peer_id: str) -> str | None:
        """The model ``peer_id`` announces (``None``: unknown peer)."""
        peer = self.table.get(peer_id)
        return peer.model if peer is not None else None

    def _anchor_first(self, chunk: Chunk, assignments: list[Assignment]) -> list[Assignment]:
        """``assignments`` with the peer of the most reliable model for ``chunk``'s kind first (it gets the
        greedy anchor, :func:`with_anchor`); the routing order otherwise, and unchanged while no model
        has a better posterior than another (:meth:`FitnessBook.model_posterior`)."""
        kind = chunk.operation.value
        posterior = {a.peer_id: self.fitness.model_posterior(self._model_of(a.peer_id), kind) for a in assignments}
        best = max(posterior.values(), default=0.5)
        first = next((i for i, a in enumerate(assignments) if posterior[a.peer_id] == best), 0)
        return [assignments[first], *assignments[:first], *assignments[first + 1 :]]

    def _weigh(self, chunk: Chunk, candidates: Sequence[Candidate], pending: Sequence[str | None] = ()) -> float:
        """Set each candidate's ballot weight from its model's reliability for ``chunk``'s kind; return the
        largest weight an outstanding reply (of a model in ``pending``) could add, for :func:`is_decided`.

        Weights are :func:`~.vote.model_weight` of the posterior mean, divided by the largest among
        the models involved, so they lie in (0, 1] and are all 1 when one model serves the chunk
        (or with ``AskOptions.model_weights`` off).
        """
        if not self.options.model_weights:
            for candidate in candidates:
                candidate.weight = 1.0
            return 1.0
        kind = chunk.operation.value
        models = {c.model for c in candidates} | set(pending)
        raw = {m: model_weight(self.fitness.model_posterior(m, kind)) for m in models}
        top = max(raw.values(), default=1.0)
        for candidate in candidates:
            candidate.weight = raw[candidate.model] / top
        return max((raw[m] / top for m in pending), default=0.0)

    async def _vote(self, chunk: Chunk, candidates: list[Candidate]) -> VoteResult:
        opts = self.options
        self._weigh(chunk, candidates)
        if opts.strategy != "judge":
            result = vote(candidates, opts.strategy)
        else:
            answered = {c.peer_id for c in candidates}

            async def ask(prompt: str) -> str:
                return await self._ask_one(prompt, max_tokens=16, avoid=answered)

            result = await judge_vote(candidates, chunk.text, ask)
        return apply_anchor(result, candidates) if opts.anchor else result

    # Reward and gossip.

    def _reward(self) -> list:
        records = []
        for trace in self.traces.values():
            if trace.vote is None:
                continue
            trace.rewards = chunk_rewards(trace.candidates, trace.vote)
            records += self.fitness.issue(  # signed by this coordinator
                trace.chunk.id, trace.rewards, models=self._models(trace), kind=trace.chunk.operation.value
            )
        self.rewarded = True
        self._publish(records)
        return records

    def _models(self, trace: ChunkTrace) -> dict[str, str | None]:
        """Peer id -> the model it answered ``trace``'s chunk with."""
        return {c.peer_id: c.model for c in trace.candidates}

    def _issue(self, trace: ChunkTrace, rewards: dict[str, float], candidates: Sequence[Candidate]) -> list:
        """Sign, apply and gossip rewards for one chunk (a straggler's, after the question); returns the records."""
        models = {c.peer_id: c.model for c in candidates}
        records = self.fitness.issue(trace.chunk.id, rewards, models=models, kind=trace.chunk.operation.value)
        self._publish(records)
        return records

    def _publish(self, records: list) -> None:
        """Apply our own records, then gossip them in the background (best effort).

        They go to the pooled peers (``ln N + 2`` of them, at least the
        book's fan-out; :meth:`FitnessBook.forward`), which pass them on:
        rumor mongering plus membership's anti-entropy reach every node. Not
        to every peer directly: with more peers than the pool keeps (64),
        that opened a websocket to each unpooled peer for every question and
        evicted the connections the next questions' requests needed
        (``scripts/bench_scale.py``, N = 100: docs/results.md, issue 17).
        """
        for record in records:
            self.fitness.apply(record)
        if records:
            self.fitness.spawn_forward(records, fanout=self.fitness.fanout)

    # Synthesize.

    async def _synthesize(self, chunks: list[Chunk]) -> tuple[str, str | None]:
        """The final text and the synthesizer's node id (``None`` when a winner or the fallback is returned).

        Tries the best peers in turn (peers that failed during this question
        last), at most ``1 + max_reroutes`` of them, each within
        ``chunk_timeout_s`` and what is left of the question's deadline (less
        :data:`SYNTHESIS_RESERVE_S`). A peer that errors, drops, times out or
        writes nothing emits :class:`PeerFailed` with chunk id ``synthesis``
        (its streamed tokens so far are void; the next peer starts over).
        If every try fails, the chunk winners are returned joined
        (:func:`fallback_answer`) and the reason is added to :attr:`notes`.

        The answer keeps the vote: a single chunk returns its winner's reply
        as is (:func:`reply_text`), never a synthesis; a synthesized text that
        leaves out a chunk's winning answer (:func:`unkept_answers`) is
        replaced by :func:`fallback_answer`, with a note.
        """
        votes = {c.id: self.traces[c.id].vote for c in chunks if self.traces[c.id].vote}
        if len(chunks) == 1:
            return self._single_answer(chunks[0]), None
        if not self.options.synthesize:
            return fallback_answer(chunks, votes), None
        params = SamplingParams(
            max_tokens=max(self.options.synthesis_max_tokens, self.options.max_tokens), temperature=0.0
        )
        failed_here = {peer for trace in self.traces.values() for peer, _ in trace.failures}
        ranked = self._ranked_peers()
        ranked = [p for p in ranked if p.node_id not in failed_here] + [p for p in ranked if p.node_id in failed_here]
        messages = self._with_history(
            synthesis_messages(self.question, chunks, votes),
            params.max_tokens,
            [p.url for p in ranked[: 1 + self.options.max_reroutes]],
        )
        failures: list[str] = []
        for peer in ranked[: 1 + self.options.max_reroutes]:
            budget = min(self.options.chunk_timeout_s, self._time_left() - SYNTHESIS_RESERVE_S)
            if budget <= 0:
                failures.append("the question's deadline was near")
                break
            parts: list[str] = []
            sent: list[dict[str, str]] | None = None  # set once the request is sent, cleared by its `done`
            try:
                async with asyncio.timeout(budget):
                    client = await self.pool.get(peer.url)
                    sent = messages
                    async for item in client.generate(messages=messages, params=params, timeout_s=budget):
                        if self._count(item):
                            sent = None
                        if isinstance(item, Token) and item.text:
                            parts.append(item.text)
                            await self.emit(SynthesisToken(peer.node_id, item.text))
                text = "".join(parts).strip()
                if text and (missing := unkept_answers(text, chunks, votes)):
                    dropped = ", ".join(f"{cid} ({votes[cid].winner.display})" for cid in missing)
                    self.notes.append(
                        f"the synthesized answer left out the voted answer of {dropped}; "
                        "the chunk answers are listed as voted"
                    )
                    return fallback_answer(chunks, votes), None
                if text:
                    return text, peer.node_id
                reason = "wrote an empty answer"
            except PeerError as exc:
                reason = str(exc)
            except TimeoutError:
                reason = f"no synthesis within {budget:.3g} s"
            finally:
                self._count_unfinished(sent)
            failures.append(f"{peer.node_id}: {reason}")
            await self.emit(PeerFailed("synthesis", peer.node_id, reason))
        why = "; ".join(failures) if failures else "no alive peer with a model and spare capacity"
        self.notes.append(f"synthesis failed ({why}); the chunk answers are listed as voted")
        log.warning("question %r: synthesis failed (%s); returning the chunk answers", self.question[:60], why)
        return fallback_answer(chunks, votes), None

    def _single_answer(self, chunk: Chunk) -> str:
        """A one-chunk question's answer: the vote winner's reply, else the most confident reply, with a note."""
        trace = self.traces[chunk.id]
        if trace.vote is not None and trace.vote.winner is not None:
            return reply_text(trace.vote.winner)
        best = max(trace.candidates, key=lambda c: c.confidence or 0.0)
        self.notes.append(f"no reply to {chunk.id} committed to an answer; the most confident reply is shown")
        return reply_text(best)

    def _time_left(self) -> float:
        """Seconds until the question's deadline (infinite before :meth:`run` set it)."""
        if self.deadline is None:
            return float("inf")
        return self.deadline - asyncio.get_running_loop().time()

    # Helpers.

    def _with_history(self, tail: list[dict[str, str]], max_tokens: int, urls: Sequence[str]) -> list[dict[str, str]]:
        """``tail`` preceded by the earlier turns that fit the smallest known context window of ``urls``' peers.

        A window is known from the pooled connection's hello; with none known,
        :data:`~.history.DEFAULT_CONTEXT_TOKENS` is assumed.
        """
        if not self.history:
            return tail
        windows = [
            client.remote.max_model_len
            for url in urls
            if (client := self.pool.connection(url)) is not None and client.remote.max_model_len
        ]
        window = min(windows, default=DEFAULT_CONTEXT_TOKENS)
        return with_history(self.history, tail, context_tokens=window, max_tokens=max_tokens)

    def _count(self, item: Token | Done) -> bool:
        """Add a frame's tokens to :attr:`usage`; True for the ``done`` frame (its prompt tokens are counted)."""
        if isinstance(item, Token):
            self.usage["completion_tokens"] += item.tokens
            return False
        self.usage["prompt_tokens"] += item.usage.prompt_tokens
        return True

    def _count_unfinished(self, messages: list[dict[str, str]] | None) -> None:
        """A request sent but ended before its ``done`` (cancelled, failed): its prompt tokens, estimated."""
        if messages:
            self.usage["prompt_tokens"] += estimate_tokens(messages)

    def _ranked_peers(self, avoid: set[str] | frozenset[str] = frozenset()):
        peers = eligible_peers(self.table.alive(), self.load)
        preferred = [p for p in peers if p.node_id not in avoid] or peers
        scores = score_peers(preferred, self.options.weights)
        return sorted(preferred, key=lambda p: (scores[p.node_id], p.node_id))

    async def _ask_one(self, prompt: str, *, max_tokens: int, avoid: set[str] | frozenset[str] = frozenset()) -> str:
        """Greedy single answer from the best available peer (next ones on failure)."""
        ranked = self._ranked_peers(avoid)
        if not ranked:
            raise NoPeersError("no alive peer with a model")
        last: PeerError | None = None
        for peer in ranked[:3]:
            try:
                client = await self.pool.get(peer.url)
                result = await client.complete(
                    messages=[{"role": "user", "content": prompt}],
                    params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
                    timeout_s=self.options.chunk_timeout_s,
                )
                self.usage["prompt_tokens"] += result.done.usage.prompt_tokens
                self.usage["completion_tokens"] += result.tokens
                return result.text
            except PeerError as exc:
                last = exc
        raise last or NoPeersError("no peer answered")
