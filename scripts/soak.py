#!/usr/bin/env python
"""Soak test: many concurrent clients ask for a while; one node is SIGKILLed and restarted midway.

::

    .venv/bin/python scripts/soak.py                       # 32 clients, 60 s, three nodes started here
    .venv/bin/python scripts/soak.py --duration 10 --clients 4 --peer ws://127.0.0.1:7070 --nodes 1

Without ``--peer`` the script starts ``--nodes`` (default 3) ``dellm-node``
processes with the default model on 127.0.0.1 (mDNS off, each bootstrapping
from the others, vLLM's worker bound to core ``i mod cores`` as
``scripts/eval.py`` does). With ``--peer URL`` (repeatable) it uses those
running nodes too and starts ``--nodes`` more (default 1 then): the started
ones are the only ones it may kill. At ``--kill-at`` seconds (default a third
of ``--duration``) the last started node is SIGKILLed (its whole process
group, vLLM engine included) and restarted at once with the same arguments:
the same state directory, so the same node id, and the same port; it then
rejoins through gossip.

``--clients`` (default 32) concurrent clients each ask one question after
another until ``--duration`` seconds have passed, drawing from
``../shared/data/capitals.jsonl`` (``--data-dir``). The clients share
``--swarms`` coordinators (default 4, i.e. 8 clients per :class:`Swarm`):
one Swarm per client would add 32 gossip loops of coordinator chatter on a
two-core machine, while a single Swarm tests only one membership view.
Several clients per Swarm put many concurrent streams on each pooled peer
connection (the case where a gossip timeout once dropped the connection and
killed its streams); several Swarms keep independent coordinators with their
own peer tables and connections, as separate users would have.

Every question has a deadline (``--deadline``, passed to the pipeline as its
``timeout_s``; the chunk deadline is half of it). A watchdog waits
``--grace`` seconds more: a question still running then is *hung*. A
question *fails clearly* when it raises a ``SwarmError`` with a one-line
message; any other exception is *unclear*. Verdict **nothing lost** iff
sent == answered + failed clearly (no hung, no unclear failure).

Prints questions sent, answered (and how many contain the right capital),
failed grouped by one-line reason (ids, URLs and numbers folded), p50/p99
latency of the answered ones, the peer failures and synthesis fallbacks the
coordinators survived, the kill/restart/rejoin timeline, and each node's
resident memory (RSS, summed over its process tree: node, vLLM engine core
and workers; shared library pages count once per process, so the level is
high and the trend is what matters) after warm-up and at the end, plus this
process's own (the coordinators). After the victim has rejoined, each
coordinator asks one more question at redundancy 3 (a probe, not counted
above) to show the restarted node is routed to and answers again. Progress
lines go to stderr, the table to stdout, everything to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import re
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
from harness.data import DATA_DIR, DATA_FILE, fold, load_questions
from harness.memory import own_rss_bytes, tree_rss_bytes
from harness.nodes import NodeSlot, node_envs, run_on_nodes
from harness.options import add_ask_options
from harness.report import make_progress, publish
from harness.stats import percentile

progress = make_progress("soak")


# --------------------------------------------------------------------------- pure helpers


_URL = re.compile(r"wss?://[^\s:]+(:\d+)?")
_HEX = re.compile(r"\b(?:coordinator-)?[0-9a-f]{8,}\b")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def reason_key(exc: BaseException) -> str:
    """One line naming the kind of failure: exception type and message with URLs, ids and numbers folded."""
    message = " ".join(str(exc).split()) or "(no message)"
    message = _NUMBER.sub("N", _HEX.sub("<id>", _URL.sub("<url>", message)))
    return f"{type(exc).__name__}: {message}"[:240]


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def change(node: dict[str, Any]) -> str:
    """`` (+1.2 %)``: the RSS change of one node over the run (empty when unknown)."""
    start, end = node["rss_start_bytes"], node["rss_end_bytes"]
    return f" ({(end - start) / start:+.1%})" if start and end else ""


# --------------------------------------------------------------------------- nodes


# --------------------------------------------------------------------------- the load


@dataclass
class Tally:
    """What the clients saw."""

    sent: int = 0
    answered: int = 0
    correct: int = 0
    failed: Counter = field(default_factory=Counter)  # clear failures by reason
    examples: dict[str, str] = field(default_factory=dict)  # one verbatim message per reason
    unclear: Counter = field(default_factory=Counter)  # failures that were not a SwarmError
    hung: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    answered_at_s: list[float] = field(default_factory=list)  # seconds into the run, per answer
    peer_failures: Counter = field(default_factory=Counter)  # survived chunk/synthesis failures, by peer name
    synthesis_fallbacks: int = 0
    in_flight: int = 0
    answered_by_victim_after_restart: int = 0

    def fail(self, exc: BaseException, clear: bool) -> None:
        key = reason_key(exc)
        (self.failed if clear else self.unclear)[key] += 1
        self.examples.setdefault(key, " ".join(str(exc).split())[:300] or type(exc).__name__)


async def client_loop(
    number: int, swarm, questions: list[tuple[str, str]], tally: Tally, args, end: float, names: dict, state: dict
) -> None:
    """Ask one question after another until ``end`` (loop time)."""
    from dellm_p2p.swarm import SwarmError

    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed * 1000 + number)
    await asyncio.sleep(rng.uniform(0, 1.0))  # spread the first wave
    while loop.time() < end:
        question, capital = rng.choice(questions)
        tally.sent += 1
        tally.in_flight += 1
        started = loop.time()
        task = asyncio.ensure_future(
            swarm.ask(
                question,
                redundancy=args.redundancy,
                max_tokens=args.max_tokens,
                synthesis_max_tokens=args.max_tokens * 2,
                timeout_s=args.deadline,
                chunk_timeout_s=args.deadline / 2,
            )
        )
        try:
            # The watchdog: the pipeline must end the question by its deadline; grace covers scheduling.
            answer = await asyncio.wait_for(asyncio.shield(task), args.deadline + args.grace)
        except TimeoutError:
            tally.hung += 1
            progress(f"client {number}: {question!r} still running {args.deadline + args.grace:g} s after it began")
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except SwarmError as exc:
            clear = bool(str(exc).strip()) and "\n" not in str(exc).strip()
            tally.fail(exc, clear)
        except Exception as exc:
            tally.fail(exc, clear=False)
        else:
            tally.answered += 1
            tally.latencies_ms.append((loop.time() - started) * 1000)
            tally.answered_at_s.append(loop.time() - state["t0"])
            tally.correct += fold(capital) in fold(answer.text)
            for trace in answer.chunks:
                for peer_id, _ in trace.failures:
                    tally.peer_failures[names.get(peer_id, peer_id[:8])] += 1
            restarted_at = state.get("ready_at")
            if restarted_at is not None and started >= restarted_at:  # asked after the victim came back
                victim_id = state.get("victim_id")
                tally.answered_by_victim_after_restart += any(
                    c.peer_id == victim_id for trace in answer.chunks for c in trace.candidates
                )
            tally.synthesis_fallbacks += bool(answer.notes)
        finally:
            tally.in_flight -= 1


async def kill_and_restart(victim: NodeSlot, at: float, state: dict, swarms: list, timeline: dict) -> None:
    """SIGKILL ``victim`` at loop time ``at``, restart it with the same arguments, and watch it rejoin."""
    from dellm_p2p.local import NodeProcess
    from dellm_p2p.peer_table import PeerState

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, at - loop.time()))
    old_incarnation = {id(s): getattr(s.table.get(victim.node_id), "incarnation", 0) for s in swarms}
    await asyncio.to_thread(victim.process.kill)  # SIGKILL to the process group, then reaped
    state["killed_at"] = loop.time()
    timeline["killed_s"] = round(loop.time() - state["t0"], 2)
    timeline["in_flight_at_kill"] = state["tally"].in_flight
    progress(f"SIGKILLed {victim.name} ({victim.node_id}); restarting it with the same state dir and port")
    victim.process = NodeProcess(victim.process.args, env=victim.process.extra_env)
    victim.restarted = True
    try:
        await asyncio.to_thread(victim.process.wait_ready, state["node_timeout"])
    except Exception as exc:
        timeline["restart_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        progress(f"{victim.name} did not restart: {timeline['restart_error']}")
        return
    state["ready_at"] = loop.time()
    timeline["ready_s"] = round(loop.time() - state["t0"], 2)
    timeline["same_node_id"] = victim.process.node_id == victim.node_id
    progress(
        f"{victim.name} is serving again ({victim.process.node_id}) after {loop.time() - state['killed_at']:.1f} s"
    )

    def rejoined() -> bool:
        for swarm in swarms:
            record = swarm.table.get(victim.node_id)
            if record is None or record.state is not PeerState.ALIVE:
                return False
            if record.incarnation <= old_incarnation[id(swarm)]:
                return False
        return True

    while not rejoined():  # noqa: ASYNC110 (polls the coordinators' tables)
        await asyncio.sleep(0.2)
    timeline["rejoined_s"] = round(loop.time() - state["t0"], 2)
    progress(f"every coordinator sees {victim.name} alive again (new incarnation)")


async def probe_victim(swarms: list, questions: list[tuple[str, str]], victim_id: str, args) -> dict[str, Any]:
    """After the rejoin (the load may be over): one question per coordinator, redundancy 3; does the victim serve?

    Returns ``{"asked", "routed_to_victim", "answered_by_victim", "errors"}`` (errors: one line each).
    """
    from dellm_p2p.swarm import SwarmError

    async def one(swarm, question: str):
        return await swarm.ask(question, redundancy=3, max_tokens=args.max_tokens, timeout_s=args.deadline)

    picks = random.Random(args.seed).sample(questions, len(swarms))
    results = await asyncio.gather(
        *(one(w, q) for w, (q, _) in zip(swarms, picks, strict=True)), return_exceptions=True
    )
    answers = [r for r in results if not isinstance(r, BaseException)]
    errors = [reason_key(r) for r in results if isinstance(r, SwarmError | TimeoutError)]
    return {
        "asked": len(swarms),
        "routed_to_victim": sum(any(a.peer_id == victim_id for t in r.chunks for a in t.assignments) for r in answers),
        "answered_by_victim": sum(any(c.peer_id == victim_id for t in r.chunks for c in t.candidates) for r in answers),
        "errors": errors,
    }


async def report_progress(tally: Tally, t0: float, slots: list[NodeSlot], every_s: float = 10.0) -> None:
    """A progress line every ``every_s`` [s], and a memory sample of every node (its ``rss_series``)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        for slot in slots:
            pid = slot.pid()
            rss = await asyncio.to_thread(tree_rss_bytes, pid) if pid else None
            slot.rss_series.append((round(loop.time() - t0, 1), rss))
        failed = sum(tally.failed.values()) + sum(tally.unclear.values())
        progress(
            f"{loop.time() - t0:5.0f} s: sent {tally.sent}, answered {tally.answered}, failed {failed}, "
            f"hung {tally.hung}, in flight {tally.in_flight}"
        )


async def sample_memory(slots: list[NodeSlot], t0: float, every_s: float) -> None:
    """Every ``every_s`` [s] (and once at the start), each node's memory by role into ``slot.memory``."""
    from harness.memory import MemorySample, MemorySeries, sample_tree

    loop = asyncio.get_running_loop()
    for slot in slots:
        slot.memory = MemorySeries(slot.name)
    while True:
        at = round(loop.time() - t0, 1)
        for slot in slots:
            pid = slot.pid()
            roles = await asyncio.to_thread(sample_tree, pid) if pid else None
            slot.memory.samples.append(MemorySample(at, roles))
        await asyncio.sleep(every_s)


async def soak(args: argparse.Namespace, slots: list[NodeSlot]) -> dict[str, Any]:
    from dellm_p2p.client import PeerClient
    from dellm_p2p.security import cluster_key_from_env
    from dellm_p2p.swarm import Swarm

    questions = load_questions(args.data_dir)
    urls = [s.url for s in slots]
    key = cluster_key_from_env()  # the nodes started here inherit DELLM_CLUSTER_KEY_FILE too
    for slot in slots:  # node ids, for names in the report and to follow the victim
        async with await PeerClient.connect(slot.url, timeout_s=30, cluster_key=key) as client:
            slot.node_id = client.remote.node_id
            slot.name = client.remote.name or slot.name
    names = {s.node_id: s.name for s in slots}
    for slot in slots:
        pid = slot.pid()
        slot.rss_start = tree_rss_bytes(pid) if pid else None
    own_rss_start = own_rss_bytes()

    swarms = [Swarm(peers=urls, mdns=False, discover_timeout_s=60, cluster_key=key) for _ in range(args.swarms)]
    for swarm in swarms:
        await swarm.start()
    loop = asyncio.get_running_loop()
    tally = Tally()
    t0 = loop.time()
    end = t0 + args.duration
    victim = next((s for s in reversed(slots) if s.process is not None), None)
    state: dict[str, Any] = {"t0": t0, "tally": tally, "node_timeout": args.node_timeout}
    timeline: dict[str, Any] = {}
    killer = None
    if victim is not None and args.kill_at > 0:
        state["victim_id"] = victim.node_id
        killer = asyncio.create_task(kill_and_restart(victim, t0 + args.kill_at, state, swarms, timeline))
    reporter = asyncio.create_task(report_progress(tally, t0, slots))
    sampler = asyncio.create_task(sample_memory(slots, t0, args.sample_every)) if args.sample_every else None
    progress(
        f"{args.clients} clients on {args.swarms} coordinator(s) asking for {args.duration:g} s against "
        f"{len(slots)} node(s)" + (f"; {victim.name} is killed at {args.kill_at:g} s" if killer else "")
    )
    try:
        async with asyncio.TaskGroup() as group:
            for number in range(args.clients):
                swarm = swarms[number % len(swarms)]
                group.create_task(client_loop(number, swarm, questions, tally, args, end, names, state))
        load_s = loop.time() - t0
        if sampler is not None:  # the last sample closes the load window
            sampler.cancel()
            await sample_memory_once(slots, loop.time() - t0)
        progress(f"load done after {load_s:.1f} s; {tally.sent} questions sent")
        if killer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(killer), args.node_timeout + 60)
            except TimeoutError:
                timeline["rejoin_error"] = "not rejoined in time"
            if "rejoined_s" in timeline:
                timeline["probe"] = await probe_victim(swarms, questions, victim.node_id, args)
    finally:
        reporter.cancel()
        if sampler is not None:
            sampler.cancel()
        if killer is not None and not killer.done():
            killer.cancel()
        for swarm in swarms:
            await swarm.close()
    await asyncio.sleep(args.settle)  # let the nodes finish cancelled work and free memory
    for slot in slots:
        pid = slot.pid()
        slot.rss_end = tree_rss_bytes(pid) if pid else None
    own_rss_end = own_rss_bytes()

    failed_clear = sum(tally.failed.values())
    failed_unclear = sum(tally.unclear.values())
    nothing_lost = tally.sent == tally.answered + failed_clear and tally.hung == 0 and failed_unclear == 0
    return {
        "settings": {
            "clients": args.clients,
            "swarms": args.swarms,
            "duration_s": args.duration,
            "kill_at_s": args.kill_at if killer else None,
            "redundancy": args.redundancy,
            "max_tokens": args.max_tokens,
            "deadline_s": args.deadline,
            "grace_s": args.grace,
            "data": str(args.data_dir / DATA_FILE),
        },
        "load_s": round(load_s, 2),
        "sent": tally.sent,
        "answered": tally.answered,
        "correct": tally.correct,
        "failed": failed_clear,
        "failed_by_reason": dict(tally.failed.most_common()),
        "unclear_failures": dict(tally.unclear.most_common()),
        "reason_examples": tally.examples,
        "hung": tally.hung,
        "latency_ms": {
            "p50": percentile(tally.latencies_ms, 50),
            "p99": percentile(tally.latencies_ms, 99),
            "max": max(tally.latencies_ms, default=None),
        },
        "peer_failures_survived": dict(tally.peer_failures),
        "synthesis_fallbacks": tally.synthesis_fallbacks,
        "victim": victim.name if killer else None,
        "timeline": timeline,
        "answers_with_restarted_victim": tally.answered_by_victim_after_restart,
        "nodes": [
            {
                "name": s.name,
                "node_id": s.node_id,
                "url": s.url,
                "started_here": s.process is not None,
                "restarted": s.restarted,
                "rss_start_bytes": s.rss_start,
                "rss_end_bytes": s.rss_end,
                "rss_series": s.rss_series,
            }
            for s in slots
        ],
        "coordinator_rss_bytes": {"start": own_rss_start, "end": own_rss_end},
        "memory": memory_result(slots, tally, load_s, args.sample_every),
        "nothing_lost": nothing_lost,
    }


async def sample_memory_once(slots: list[NodeSlot], at_s: float) -> None:
    """One more reading of every node (the end of the load)."""
    from harness.memory import MemorySample, sample_tree

    for slot in slots:
        if slot.memory is not None:
            pid = slot.pid()
            roles = await asyncio.to_thread(sample_tree, pid) if pid else None
            slot.memory.samples.append(MemorySample(round(at_s, 1), roles))


def memory_result(slots: list[NodeSlot], tally: Tally, load_s: float, every_s: float) -> dict[str, Any] | None:
    """The ``memory`` part of the result: samples, per-role summary and throughput by half (``None`` if off)."""
    from harness.memory import throughput_halves

    if not every_s:
        return None
    return {
        "every_s": every_s,
        "throughput": throughput_halves(tally.answered_at_s, load_s),
        "nodes": [
            {
                "name": s.name,
                "variant": s.variant,
                "restarted": s.restarted,
                "summary": s.memory.summary(load_s),
                "samples": [{"at_s": m.at_s, "roles": m.roles} for m in s.memory.samples],
            }
            for s in slots
            if s.memory is not None
        ],
    }


# --------------------------------------------------------------------------- report


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    console = Console()
    table = Table(
        title=f"soak: {s['clients']} clients on {s['swarms']} coordinators, {s['duration_s']:g} s",
        caption=f"redundancy {s['redundancy']}, max_tokens {s['max_tokens']}, question deadline {s['deadline_s']:g} s",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    lat = result["latency_ms"]

    def ms(value):
        return "n/a" if value is None else f"{value:,.0f}"

    table.add_row("questions sent", str(result["sent"]))
    table.add_row("answered", f"{result['answered']} ({result['correct']} with the right capital)")
    table.add_row("failed with a clear error", str(result["failed"]))
    table.add_row("failed unclearly", str(sum(result["unclear_failures"].values())))
    table.add_row("hung past deadline + grace", str(result["hung"]))
    table.add_row("latency p50 / p99 / max (ms)", f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])}")
    survived = ", ".join(f"{k} {v}" for k, v in sorted(result["peer_failures_survived"].items())) or "none"
    table.add_row("peer failures survived (re-routed)", survived)
    table.add_row("synthesis fallbacks (chunk answers listed)", str(result["synthesis_fallbacks"]))
    t = result["timeline"]
    if result["victim"]:
        table.add_row(
            f"{result['victim']}: killed / serving again / rejoined (s)",
            f"{t.get('killed_s', '-')} / {t.get('ready_s', '-')} / {t.get('rejoined_s', '-')}",
        )
        table.add_row("in flight at the kill", str(t.get("in_flight_at_kill", "-")))
        table.add_row("same node id after restart", str(t.get("same_node_id", "-")))
        table.add_row("answers with it, asked after it was back", str(result["answers_with_restarted_victim"]))
        if probe := t.get("probe"):
            table.add_row(
                "probe after rejoin: routed to it / answered by it",
                f"{probe['routed_to_victim']} / {probe['answered_by_victim']} of {probe['asked']}"
                + (f" ({len(probe['errors'])} failed)" if probe["errors"] else ""),
            )
        for key in ("restart_error", "rejoin_error"):
            if key in t:
                table.add_row(key.replace("_", " "), t[key])
    for node in result["nodes"]:
        if node["restarted"]:
            label = f"RSS {node['name']} start → end (MiB) (restarted)"
            value = f"{mib(node['rss_start_bytes'])} → {mib(node['rss_end_bytes'])}{change(node)}"
        else:  # the first sample under load and the last one before the load ended show the trend under load
            under = [(at, rss) for at, rss in node["rss_series"] if at <= result["load_s"] and rss is not None]
            picks = [under[0], under[-1]] if len(under) > 1 else under
            label = f"RSS {node['name']} start → {' → '.join(f'{at:g} s' for at, _ in picks)} → end (MiB)"
            middle = "".join(f" → {mib(rss)}" for _, rss in picks)
            value = f"{mib(node['rss_start_bytes'])}{middle} → {mib(node['rss_end_bytes'])}{change(node)}"
        table.add_row(label, value)
    own = result["coordinator_rss_bytes"]
    table.add_row("RSS this process (coordinators) (MiB)", f"{mib(own['start'])} → {mib(own['end'])}")
    verdict = "[green]nothing lost[/]" if result["nothing_lost"] else "[red]LOST QUESTIONS[/]"
    table.add_row("verdict", verdict)
    console.print(table)
    if result["failed_by_reason"] or result["unclear_failures"]:
        reasons = Table(title="failures by reason")
        reasons.add_column("count", justify="right")
        reasons.add_column("kind")
        reasons.add_column("reason (ids, URLs, numbers folded)", overflow="fold")
        for kind, group in (("clear", result["failed_by_reason"]), ("UNCLEAR", result["unclear_failures"])):
            for reason, count in group.items():
                reasons.add_row(str(count), kind, reason)
        console.print(reasons)
    from harness.memory import report_memory

    report_memory(result)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of asking (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--swarms", type=int, default=4, help="coordinators the clients share (default 4)")
    parser.add_argument("--peer", action="append", default=[], help="a running node to use too (repeatable)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes to start (default 3, or 1 with --peer)")
    parser.add_argument("--kill-at", type=float, default=None, help="SIGKILL time [s] (default duration/3; 0 = none)")
    add_ask_options(parser, max_tokens=16, deadline_s=60.0)
    parser.add_argument("--grace", type=float, default=5.0, help="watchdog slack past the deadline [s]")
    parser.add_argument("--max-concurrency", type=int, default=64, help="of the nodes started here")
    parser.add_argument("--node-timeout", type=float, default=600.0, help="node start deadline [s]")
    parser.add_argument("--settle", type=float, default=3.0, help="wait before the final memory reading [s]")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"default {DATA_DIR}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument(
        "--sample-every",
        type=float,
        default=60.0,
        help="memory by role (node, engine core, worker) every N s, with slopes; 0 = off (default 60)",
    )
    parser.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="[L:]KEY=VALUE",
        help="extra environment for the nodes started here, or only node soak-L (repeatable; for A/B runs)",
    )
    args = parser.parse_args(argv)
    if args.nodes is None:
        args.nodes = 1 if args.peer else 3
    if args.kill_at is None:
        args.kill_at = args.duration / 3
    if args.duration <= 0 or args.clients < 1 or args.swarms < 1 or args.deadline <= 0:
        parser.error("--duration, --clients, --swarms and --deadline must be positive")
    if args.nodes < 0 or (args.nodes == 0 and not args.peer):
        parser.error("no nodes: give --peer or --nodes >= 1")
    if not 0 <= args.kill_at < args.duration:
        parser.error("--kill-at must be within the run")
    args.swarms = min(args.swarms, args.clients)
    if args.sample_every < 0:
        parser.error("--sample-every must be >= 0")
    try:
        args.node_envs = node_envs(args.node_env, args.nodes)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the nodes this script started, like Ctrl-C


def ready(slot: NodeSlot) -> None:
    progress(f"node ready: {slot.process.stdout_lines[-1] if slot.process.stdout_lines else slot.url}")


def main(argv: list[str] | None = None) -> int:

    args = parse_args(argv)
    if not (args.data_dir / DATA_FILE).exists():
        progress(f"no data file {args.data_dir / DATA_FILE} (see --data-dir)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    slots = [NodeSlot(f"peer-{i + 1}", url) for i, url in enumerate(args.peer)]
    if args.nodes:
        progress(f"starting {args.nodes} node(s) with the default model (up to {args.node_timeout:g} s)")
    status, result = run_on_nodes(
        lambda started: soak(args, slots + started), args.nodes or 0, args.peer, prefix="dellm-soak-",
        max_concurrency=args.max_concurrency, timeout_s=args.node_timeout, progress=progress,
        envs=args.node_envs, on_ready=ready,
    )  # fmt: skip
    if result is None:
        return status
    publish(result, report, args.json, progress)
    return 0 if result["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
