"""Benchmark membership gossip: convergence time, steady-state traffic and memory for N nodes.

For each N in ``--sizes``: start one bootstrap ``dellm-node --no-model --no-mdns``
and N-1 more with ``--peer <bootstrap>``, each its own process on 127.0.0.1
(as on separate hosts). Every node therefore knows only the bootstrap at
first and must learn the others by push-pull membership gossip (peer
exchange). mDNS is off on purpose: on loopback every node would hear every
other one directly, hiding peer exchange.

Figures per N:

* start-up: first process started -> last node printed its ready line [s]
  (~0.1 s resolution: ``NodeProcess.wait_ready`` polls at 10 Hz);
* convergence: every node's peer table lists every other node as *alive*,
  from the moment the last node was ready and from the first start [s].
  The peer tables are polled in sweeps (one ``get_peers`` per node per sweep,
  at most ``--max-conns`` requests in flight, each under a deadline); the
  convergence instant is the latest time at which a node was first seen
  complete in the run of sweeps that ended with all nodes complete;
* steady state, ``--warmup-s`` after convergence: each node's ``stats``
  (websocket payload bytes sent + received over all its connections) is read
  once, then again ``--settle-s`` later; bytes/s per node over the node's own
  clock (``uptime_s``). Our own two ``get_stats`` round trips land in the
  counters: the reply to the first read and the request of the second fall
  inside the window (a few hundred bytes per node); they are measured on our
  side and subtracted. Peer-table polling pauses during the window;
* gossip rounds/s per node: each node raises its own heartbeat once per
  gossip round; it is read (an empty ``members`` push, answered with the
  node's digest and changing nothing) just before and just after the window.
  The nominal rate is 1 / gossip interval;
* RSS per node (psutil) at the end of the window, and the nodes' CPU use
  during the window (sum over nodes, in % of one core; the machine has
  ``nproc`` cores).

* false positives (``--fp-run-s 60`` for issue 14's figure): a steady run in
  which every node drops ``--drop-rate`` (default 5 %) of its outgoing SWIM
  datagrams on purpose (``DELLM_BENCH_DROP_RATE``, set for the whole run);
  the tables are polled in sweeps and every (observer, live node) pair ever
  seen *dead* counts as a false positive (*suspect* ones are counted apart:
  a suspicion refuted in time is SWIM working);
* failure detection (issue 14): one node (not the bootstrap) is SIGKILLed;
  time until every other node's table lists it *dead* (out of routing:
  ``PeerTable.alive`` leaves dead rows out), and until the first one does;
* ``--membership gossip`` runs the heartbeat gossip of before issue 14 for
  comparison (its failure timeouts are the library's suspect/dead ones).

All nodes are stopped after each N (SIGTERM in parallel, SIGKILL for
leftovers), also on Ctrl-C, SIGTERM or an error.

Usage::

    .venv/bin/python scripts/bench_membership.py [--sizes 10,50,100] [--settle-s 10]
        [--timeout-s 120] [--gossip-interval 0.5] [--fanout 3] [--json out.json]
        [--membership swim|gossip] [--fp-run-s 60] [--drop-rate 0.05] [--detect-timeout-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.config import NodeConfig
from dellm_p2p.local import NodeProcess, NodeStartError
from dellm_p2p.security import cluster_key_from_env

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
from harness.options import parse_sizes
from harness.report import make_progress

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0  # SIGTERM grace per node, all nodes in parallel; then SIGKILL
MIB = 1024 * 1024

# Every node process this script started and has not yet reaped; the atexit
# hook and the finally blocks kill whatever is left here.
_LIVE: list[NodeProcess] = []
_LIVE_LOCK = threading.Lock()


progress = make_progress("bench_membership")


def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = [p for p in _LIVE if p.proc.poll() is None]
    for node in leftovers:
        with contextlib.suppress(Exception):
            node.kill()


atexit.register(_kill_leftovers)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------
# Processes


def start_cluster(
    n: int, state_root: Path, env: dict[str, str], ready_timeout_s: float, out: dict, nodes: list[NodeProcess]
) -> None:
    """Start the bootstrap node, then N-1 nodes at once, appending each to ``nodes``; timings go into ``out``."""

    def spawn(i: int, peer: str | None) -> NodeProcess:
        args = ["--no-model", "--no-mdns", "--name", f"bm{n}-{i:03d}", "--port", "0", "--host", HOST]
        args += ["--state-dir", str(state_root / f"node{i:03d}")]
        if peer:
            args += ["--peer", peer]
        node = NodeProcess(args, env=env)
        with _LIVE_LOCK:
            _LIVE.append(node)
        nodes.append(node)
        return node

    t_first = time.monotonic()
    out["t_first_start"] = t_first
    try:
        boot_url = spawn(0, None).wait_ready(ready_timeout_s)
        out["bootstrap_ready_s"] = time.monotonic() - t_first
        if not boot_url.startswith(f"ws://{HOST}:"):
            raise RuntimeError(f"bootstrap node listens on {boot_url}, not on {HOST}")
        for i in range(1, n):
            spawn(i, boot_url)
        out["spawned_s"] = time.monotonic() - t_first
        deadline = t_first + ready_timeout_s
        for node in nodes[1:]:
            url = node.wait_ready(max(1.0, deadline - time.monotonic()))
            if not url.startswith(f"ws://{HOST}:"):
                raise RuntimeError(f"a node listens on {url}, not on {HOST}")
    except BaseException:
        out["nodes_started"] = len(nodes)
        out["nodes_ready"] = sum(1 for p in nodes if p.url)
        raise
    out["t_last_ready"] = time.monotonic()
    out["startup_s"] = out["t_last_ready"] - t_first
    ids = [p.node_id for p in nodes]
    if len(set(ids)) != n or not all(ids):
        raise RuntimeError(f"node ids missing or not unique: {ids}")


def stop_cluster(nodes: list[NodeProcess]) -> dict[str, Any]:
    """SIGTERM every node in parallel (``STOP_TIMEOUT_S`` each), then SIGKILL leftovers."""
    started = time.monotonic()
    killed = 0
    try:
        if nodes:
            with ThreadPoolExecutor(max_workers=min(64, len(nodes))) as pool:
                list(pool.map(lambda p: _quiet(p.stop, STOP_TIMEOUT_S), nodes))
    finally:
        for node in nodes:  # also reached on a second Ctrl-C during the graceful stop
            if node.proc.poll() is None:
                killed += 1
                _quiet(node.kill)
        with _LIVE_LOCK:
            for node in nodes:
                if node.proc.poll() is not None and node in _LIVE:
                    _LIVE.remove(node)
    codes = [p.proc.returncode for p in nodes]
    return {
        "stop_s": round(time.monotonic() - started, 2),
        "killed": killed,
        "nonzero_exit": sum(1 for c in codes if c not in (0, None)),
    }


def _quiet(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # stopping one node must not keep us from stopping the rest
        progress(f"while stopping a node: {type(exc).__name__}: {exc}")
        return None


# ---------------------------------------------------------------------------
# Talking to the nodes


class Prober:
    """One lazily opened websocket per node, at most ``max_conns`` requests in flight."""

    def __init__(self, nodes: list[NodeProcess], max_conns: int, rpc_timeout_s: float):
        self.nodes = nodes
        self.sem = asyncio.Semaphore(max_conns)
        self.rpc_timeout_s = rpc_timeout_s
        self.clients: dict[int, PeerClient] = {}
        self.failures = 0

    async def _client(self, i: int) -> PeerClient:
        client = self.clients.get(i)
        if client is None or client.closed:
            client = await PeerClient.connect(
                self.nodes[i].url,
                name="bench-membership",
                timeout_s=self.rpc_timeout_s,
                cluster_key=cluster_key_from_env(),  # the nodes inherit DELLM_CLUSTER_KEY_FILE too
            )
            self.clients[i] = client
        return client

    async def call(self, i: int, what: str):
        """``what``: "peers", "stats" or "members". Returns (reply, client, bytes sent, bytes received) or None."""
        async with self.sem:
            try:
                async with asyncio.timeout(self.rpc_timeout_s):
                    client = await self._client(i)
                    sent0, received0 = client.bytes_sent, client.bytes_received
                    if what == "members":  # an empty push: the node answers with its digest, learns nothing
                        reply = await client.members([], self.rpc_timeout_s)
                    else:
                        reply = await getattr(client, what)(self.rpc_timeout_s)
                    return reply, client, client.bytes_sent - sent0, client.bytes_received - received0
            except (PeerError, TimeoutError, OSError):
                self.failures += 1
                client = self.clients.pop(i, None)
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
                return None

    async def close(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


@dataclass
class TableCheck:
    """One node's peer table against the expected membership."""

    t: float  # time.monotonic() when the answer arrived
    ok: bool = False
    answered: bool = False
    alive: int = 0  # expected peers listed alive
    suspect: int = 0
    dead: int = 0
    left: int = 0
    missing: int = 0  # expected peers not in the table at all
    unmeasured_rtt: int = 0  # alive rows never pinged by this node (rtt_ms None)


async def check_tables(prober: Prober, expected: list[set[str]]) -> list[TableCheck]:
    async def one(i: int) -> TableCheck:
        got = await prober.call(i, "peers")
        now = time.monotonic()
        if got is None:
            return TableCheck(t=now, missing=len(expected[i]))
        rows = {r.node_id: r for r in got[0].peers}
        check = TableCheck(t=now, answered=True)
        for node_id in expected[i]:
            row = rows.get(node_id)
            if row is None:
                check.missing += 1
            else:
                setattr(check, row.state, getattr(check, row.state) + 1)
                if row.state == "alive" and row.rtt_ms is None:
                    check.unmeasured_rtt += 1
        check.ok = check.alive == len(expected[i])
        return check

    return await asyncio.gather(*(one(i) for i in range(len(expected))))


async def heartbeat(prober: Prober, i: int, node_id: str) -> tuple[int, float] | None:
    """The node's own gossip heartbeat (raised once per gossip round) and when we read it."""
    got = await prober.call(i, "members")
    if got is None or not got[0].entries or got[0].entries[0].node_id != node_id:
        return None
    return got[0].entries[0].heartbeat, time.monotonic()


def cpu_seconds(nodes: list[NodeProcess]) -> list[float | None]:
    """user+system CPU time of each node process so far [s]."""
    out: list[float | None] = []
    for node in nodes:
        try:
            t = psutil.Process(node.proc.pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(None)
    return out


def cpu_share(before: list[float | None], after: list[float | None], wall_s: float) -> dict[str, float | None]:
    """CPU use of the nodes between two ``cpu_seconds`` readings [% of one core]."""
    used = [b - a for a, b in zip(before, after, strict=True) if a is not None and b is not None]
    if not used or wall_s <= 0:
        return {"sum_pct": None, "mean_pct": None, "max_pct": None}
    return {
        "sum_pct": round(100 * sum(used) / wall_s, 1),
        "mean_pct": round(100 * statistics.fmean(used) / wall_s, 2),
        "max_pct": round(100 * max(used) / wall_s, 2),
    }


def machine_busy_pct(before: Any, after: Any) -> float:
    """Whole-machine CPU busy share between two ``psutil.cpu_times()`` readings [% of all cores]."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    return round(100 * (1 - idle / total), 1) if total > 0 else 0.0


def sweep_summary(checks: list[TableCheck]) -> dict[str, int]:
    return {
        "complete_nodes": sum(c.ok for c in checks),
        "unanswered": sum(not c.answered for c in checks),
        "alive_links": sum(c.alive for c in checks),
        "suspect_links": sum(c.suspect for c in checks),
        "dead_links": sum(c.dead for c in checks),
        "left_links": sum(c.left for c in checks),
        "missing_links": sum(c.missing for c in checks),
        "unmeasured_rtt_links": sum(c.unmeasured_rtt for c in checks),
    }


# ---------------------------------------------------------------------------
# Measurement


async def measure(nodes: list[NodeProcess], args: argparse.Namespace, out: dict) -> None:
    n = len(nodes)
    ids = [p.node_id for p in nodes]
    expected = [set(ids) - {own} for own in ids]
    prober = Prober(nodes, args.max_conns, args.rpc_timeout_s)
    t_last_ready, t_first = out["t_last_ready"], out["t_first_start"]
    try:
        # 1. Convergence.
        cpu0, machine0 = cpu_seconds(nodes), psutil.cpu_times()
        ok_since: list[float | None] = [None] * n
        timeline: list[dict[str, Any]] = []
        deadline = t_last_ready + args.timeout_s
        converged_at: float | None = None
        last_report = 0.0
        sweeps = 0
        while True:
            sweep_started = time.monotonic()
            checks = await check_tables(prober, expected)
            sweeps += 1
            for i, check in enumerate(checks):
                ok_since[i] = (ok_since[i] or check.t) if check.ok else None
            summary = sweep_summary(checks)
            now = time.monotonic()
            timeline.append({"t_s": round(now - t_last_ready, 2), "sweep_s": round(now - sweep_started, 3), **summary})
            if all(s is not None for s in ok_since):
                converged_at = max(s for s in ok_since if s is not None)
                break
            if now - last_report >= 5.0:
                last_report = now
                progress(
                    f"N={n} t={now - t_last_ready:6.1f} s after last ready: "
                    f"{summary['complete_nodes']}/{n} nodes complete, links alive {summary['alive_links']}"
                    f"/{n * (n - 1)}, suspect {summary['suspect_links']}, dead {summary['dead_links']}, "
                    f"missing {summary['missing_links']}, unanswered polls {summary['unanswered']}, "
                    f"load avg {os.getloadavg()[0]:.1f}"
                )
            if now >= deadline:
                break
            await asyncio.sleep(args.poll_interval_s)
        t_conv_end = time.monotonic()
        out["convergence_cpu"] = cpu_share(cpu0, cpu_seconds(nodes), t_conv_end - t_last_ready)
        out["convergence_machine_busy_pct"] = machine_busy_pct(machine0, psutil.cpu_times())
        out["sweeps"] = sweeps
        out["sweep_s_median"] = round(statistics.median(e["sweep_s"] for e in timeline), 3)
        out["timeline"] = timeline
        out["converged"] = converged_at is not None
        if converged_at is None:
            out["last_sweep"] = timeline[-1]
            progress(f"N={n}: NOT converged within {args.timeout_s:g} s after the last node was ready")
        else:
            out["convergence_after_last_ready_s"] = round(max(0.0, converged_at - t_last_ready), 2)
            out["convergence_after_first_start_s"] = round(converged_at - t_first, 2)
            progress(
                f"N={n}: converged {out['convergence_after_last_ready_s']:.2f} s after the last node was ready "
                f"({out['convergence_after_first_start_s']:.2f} s after the first start), {sweeps} sweeps"
            )

        # 2. Steady state (measured even without convergence: traffic and CPU explain why).
        if args.warmup_s > 0:
            progress(f"N={n}: warm-up {args.warmup_s:g} s, then a {args.settle_s:g} s measuring window")
            await asyncio.sleep(args.warmup_s)
        # Heartbeats (one per gossip round) read just outside the window: rounds/s per node.
        beats1 = await asyncio.gather(*(heartbeat(prober, i, ids[i]) for i in range(n)))
        first = await asyncio.gather(*(prober.call(i, "stats") for i in range(n)))
        cpu1, machine1, wall1 = cpu_seconds(nodes), psutil.cpu_times(), time.monotonic()
        await asyncio.sleep(args.settle_s)
        second = await asyncio.gather(*(prober.call(i, "stats") for i in range(n)))
        cpu2, machine2, wall2 = cpu_seconds(nodes), psutil.cpu_times(), time.monotonic()
        beats2 = await asyncio.gather(*(heartbeat(prober, i, ids[i]) for i in range(n)))
        round_rates = [
            (b[0] - a[0]) / (b[1] - a[1])
            for a, b in zip(beats1, beats2, strict=True)
            if a is not None and b is not None and b[1] > a[1]
        ]
        rss = []
        for node in nodes:
            with contextlib.suppress(psutil.Error):
                rss.append(psutil.Process(node.proc.pid).memory_info().rss / MIB)

        rates, sent_rates, received_rates, overheads = [], [], [], []
        for a, b in zip(first, second, strict=True):
            if a is None or b is None or a[1] is not b[1]:  # a failed read or a reconnect in between
                continue
            stats1, _, _, reply1_bytes = a
            stats2, _, request2_bytes, _ = b
            window = stats2.uptime_s - stats1.uptime_s
            if window <= 0:
                continue
            overhead = reply1_bytes + request2_bytes  # our own frames counted inside the window
            sent = stats2.bytes_sent - stats1.bytes_sent - reply1_bytes
            received = stats2.bytes_received - stats1.bytes_received - request2_bytes
            rates.append((sent + received) / window)
            sent_rates.append(sent / window)
            received_rates.append(received / window)
            overheads.append(overhead)
        out["steady"] = {
            "nodes_measured": len(rates),
            "window_s": round(wall2 - wall1, 2),
            "bytes_per_s_mean": round(statistics.fmean(rates)) if rates else None,
            "bytes_per_s_max": round(max(rates)) if rates else None,
            "bytes_per_s_min": round(min(rates)) if rates else None,
            "sent_bytes_per_s_mean": round(statistics.fmean(sent_rates)) if rates else None,
            "received_bytes_per_s_mean": round(statistics.fmean(received_rates)) if rates else None,
            "measurement_overhead_bytes_per_node": round(statistics.fmean(overheads)) if overheads else None,
            "rounds_per_s_mean": round(statistics.fmean(round_rates), 2) if round_rates else None,
            "rounds_per_s_max": round(max(round_rates), 2) if round_rates else None,
            "rounds_per_s_nominal": round(1 / args.gossip_interval, 2),
            "rss_mib_mean": round(statistics.fmean(rss), 1) if rss else None,
            "rss_mib_max": round(max(rss), 1) if rss else None,
            "cpu": cpu_share(cpu1, cpu2, wall2 - wall1),
            "machine_busy_pct": machine_busy_pct(machine1, machine2),
        }
        # 3. Still converged after the window? (suspect/dead entries show late heartbeats)
        after = await check_tables(prober, expected)
        out["after_window"] = sweep_summary(after)
        # 4. False positives over a steady run (datagrams dropped on purpose all along, see --drop-rate).
        if args.fp_run_s > 0:
            out["false_positives"] = await watch_false_positives(prober, ids, args.fp_run_s, args.poll_interval_s)
            fp = out["false_positives"]
            progress(
                f"N={n}: {args.fp_run_s:g} s steady run with {args.drop_rate:.0%} datagrams dropped: "
                f"{fp['dead_pairs']} false positives (live node seen dead), {fp['suspect_pairs']} suspect pairs"
            )
        # 5. Failure detection: SIGKILL one node, time until every other node marks it dead.
        if args.detect_timeout_s > 0 and n >= 3:
            out["detection"] = await detect_failure(nodes, prober, ids, args)
            d = out["detection"]
            progress(
                f"N={n}: SIGKILL of one node -> first dead mark {fmt(d.get('first_dead_s'), '.2f')} s, "
                f"dead everywhere {fmt(d.get('all_dead_s'), '.2f')} s"
            )
        out["probe_failures"] = prober.failures
    finally:
        await prober.close()


async def watch_false_positives(prober: Prober, ids: list[str], run_s: float, poll_s: float) -> dict[str, Any]:
    """Poll every table for ``run_s`` [s]; every (observer, subject) pair ever seen dead or suspect (all are live)."""
    dead: set[tuple[int, str]] = set()
    suspect: set[tuple[int, str]] = set()
    end, sweeps = time.monotonic() + run_s, 0

    async def one(i: int) -> None:
        got = await prober.call(i, "peers")
        if got is None:
            return
        for row in got[0].peers:
            if row.node_id in ids:
                if row.state == "dead":
                    dead.add((i, row.node_id))
                elif row.state == "suspect":
                    suspect.add((i, row.node_id))

    while time.monotonic() < end:
        await asyncio.gather(*(one(i) for i in range(len(ids))))
        sweeps += 1
        await asyncio.sleep(poll_s)
    return {
        "run_s": run_s,
        "sweeps": sweeps,
        "dead_pairs": len(dead),
        "suspect_pairs": len(suspect),
        "nodes_seen_dead": len({s for _, s in dead}),
    }


async def detect_failure(
    nodes: list[NodeProcess], prober: Prober, ids: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """SIGKILL the last node; poll the others until all list it dead; times from the kill [s]."""
    victim = len(nodes) - 1
    victim_id = ids[victim]
    observers = [i for i in range(len(nodes)) if i != victim]
    marked: dict[int, float] = {}
    nodes[victim].kill()
    t_kill = time.monotonic()
    deadline = t_kill + args.detect_timeout_s

    async def one(i: int) -> None:
        got = await prober.call(i, "peers")
        if got is None:
            return
        row = next((r for r in got[0].peers if r.node_id == victim_id), None)
        if row is not None and row.state == "dead" and i not in marked:
            marked[i] = time.monotonic() - t_kill

    while len(marked) < len(observers) and time.monotonic() < deadline:
        await asyncio.gather(*(one(i) for i in observers if i not in marked))
        await asyncio.sleep(args.poll_interval_s)
    times = sorted(marked.values())
    return {
        "observers": len(observers),
        "marked_dead": len(marked),
        "first_dead_s": round(times[0], 2) if times else None,
        "median_dead_s": round(statistics.median(times), 2) if times else None,
        "all_dead_s": round(times[-1], 2) if len(marked) == len(observers) else None,
    }


def bench_one(n: int, args: argparse.Namespace, env: dict[str, str], out: dict[str, Any]) -> None:
    """Start, measure and stop one network of ``n`` nodes; figures go into ``out`` (partial on errors)."""
    out.update(n=n, load_avg_before=[round(x, 2) for x in os.getloadavg()])
    nodes: list[NodeProcess] = []
    progress(f"N={n}: starting 1 bootstrap node, then {n - 1} nodes at once (--no-mdns, --peer <bootstrap>)")
    with tempfile.TemporaryDirectory(prefix=f"bench-membership-{n}-") as tmp:
        try:
            start_cluster(n, Path(tmp), env, args.ready_timeout_s, out, nodes)
            progress(f"N={n}: all {n} nodes ready {out['startup_s']:.1f} s after the first start")
            asyncio.run(measure(nodes, args, out))
        except (NodeStartError, RuntimeError) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"N={n}: {out['error']}")
        except KeyboardInterrupt:
            out["error"] = "interrupted"
            raise
        finally:
            progress(f"N={n}: stopping {len(nodes)} nodes")
            out["stop"] = stop_cluster(nodes)
            for key in ("t_first_start", "t_last_ready"):
                out.pop(key, None)


# ---------------------------------------------------------------------------
# Report


def fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


# Heartbeat gossip before issue 14 (docs/results.md, 2026-11-29): N -> (converged after last ready [s],
# bytes/s per node mean, node CPU mean [% of a core]). Failure detection was not measured then; its
# timeouts were suspect after max(3 s, round × (2 + 2 log2 N)) and dead after 8/3 of that (~61 s at N = 100).
BEFORE = {10: (0.04, 9348, 0.7), 50: (1.82, 5123, 0.3), 100: (8.31, 6158, 0.3)}


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s, m = results["settings"], results["machine"]
    table = Table(
        title=f"membership gossip benchmark ({s['membership']}), {results['date']}",
        caption=(
            f"membership {s['membership']}: "
            + (
                f"probe interval {s['probe_interval_s']:g} s, push-pull {s['push_pull_interval_s']:g} s × log scale; "
                if s["membership"] == "swim"
                else f"gossip interval {s['gossip_interval_s']:g} s, fanout {s['fanout']}, "
                f"suspect after {s['suspect_after_s']:g} s, dead after {s['dead_after_s']:g} s; "
            )
            + f"{s['drop_rate']:.0%} of SWIM datagrams dropped on purpose, mDNS off; "
            f"window {s['settle_s']:g} s after {s['warmup_s']:g} s warm-up | "
            f"{m['nproc']} cores, {m['mem_gib']:.0f} GiB, Python {m['python']}, {m['platform']}, "
            f"dellm_p2p {results['code']}"
        ),
    )
    columns = [
        ("N", "right"),
        ("start-up of all\nprocesses (s)", "right"),
        ("converged after\nlast ready (s)", "right"),
        ("converged after\nfirst start (s)", "right"),
        ("bytes/s per node\nmean", "right"),
        ("bytes/s per node\nmax", "right"),
        ("gossip rounds/s\nper node mean", "right"),
        ("RSS per node\nmean (MiB)", "right"),
        ("node CPU in window\nsum (% of 1 core)", "right"),
        ("node CPU\nmean (%)", "right"),
        ("false positives\n(dead pairs)", "right"),
        ("SIGKILL -> dead\neverywhere (s)", "right"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for r in results["runs"]:
        st = r.get("steady") or {}
        if "error" in r and "converged" not in r:
            conv = "interrupted" if r["error"] == "interrupted" else "error"
        elif r.get("converged"):
            conv = fmt(r["convergence_after_last_ready_s"], ".2f")
        else:
            conv = f"no (> {s['timeout_s']:g})"
        table.add_row(
            str(r["n"]),
            fmt(r.get("startup_s"), ".1f"),
            conv,
            fmt(r.get("convergence_after_first_start_s"), ".2f"),
            fmt(st.get("bytes_per_s_mean"), ",.0f"),
            fmt(st.get("bytes_per_s_max"), ",.0f"),
            fmt(st.get("rounds_per_s_mean"), ".1f"),
            fmt(st.get("rss_mib_mean"), ".1f"),
            fmt((st.get("cpu") or {}).get("sum_pct"), ".0f"),
            fmt((st.get("cpu") or {}).get("mean_pct"), ".2f"),
            fmt((r.get("false_positives") or {}).get("dead_pairs"), "d"),
            fmt((r.get("detection") or {}).get("all_dead_s"), ".2f"),
        )
    Console(highlight=False, width=max(120, Console().width)).print(table)
    print(
        "notes: every node started with --no-mdns and --peer <bootstrap> only (mDNS on loopback would let every "
        "node see every other one directly and hide peer exchange); all traffic on 127.0.0.1."
    )
    print(
        "notes: bytes = websocket payload bytes sent + received by a node over all its connections (no frame "
        "counts are exposed); our two get_stats round trips per node inside the window "
        f"(~{results['overhead_bytes_hint']} bytes per node) are subtracted; peer-table polling pauses during "
        "the window. Convergence resolution: one poll sweep."
    )
    print(
        "notes: gossip rounds/s = rise of each node's own heartbeat (one per round) over the window, read with an "
        f"empty members push just outside it; nominal 1/interval = {1 / s['gossip_interval_s']:.1f} rounds/s."
    )
    for r in results["runs"]:
        if r["n"] in BEFORE:
            conv, rate, cpu_pct = BEFORE[r["n"]]
            st = r.get("steady") or {}
            print(
                f"N={r['n']} before (heartbeat gossip, docs/results.md 2026-11-29): converged {conv:.2f} s after last "
                f"ready, {rate:,} bytes/s per node, node CPU {cpu_pct} % | now ({s['membership']}): "
                f"{fmt(r.get('convergence_after_last_ready_s'), '.2f')} s, {fmt(st.get('bytes_per_s_mean'), ',.0f')} "
                f"bytes/s, {fmt((st.get('cpu') or {}).get('mean_pct'), '.2f')} %"
            )
    for r in results["runs"]:
        st, after = r.get("steady") or {}, r.get("after_window") or {}
        cpu = st.get("cpu") or {}
        line = (
            f"N={r['n']}: bootstrap ready {fmt(r.get('bootstrap_ready_s'), '.1f')} s, "
            f"poll sweeps {r.get('sweeps', '-')} (median {fmt(r.get('sweep_s_median'), '.2f')} s); "
            f"window: sent {fmt(st.get('sent_bytes_per_s_mean'), ',.0f')} + received "
            f"{fmt(st.get('received_bytes_per_s_mean'), ',.0f')} B/s per node, bytes/s min "
            f"{fmt(st.get('bytes_per_s_min'), ',.0f')}; node CPU mean {fmt(cpu.get('mean_pct'), '.1f')} % / max "
            f"{fmt(cpu.get('max_pct'), '.1f')} % of a core, machine busy {fmt(st.get('machine_busy_pct'), '.0f')} % "
            f"(all {results['machine']['nproc']} cores, other processes included); RSS max "
            f"{fmt(st.get('rss_mib_max'), '.1f')} MiB"
        )
        if after:
            line += (
                f"; after the window: {after['complete_nodes']}/{r['n']} nodes complete, suspect links "
                f"{after['suspect_links']}, dead {after['dead_links']}, missing {after['missing_links']}"
            )
        if not r.get("converged") and r.get("last_sweep"):
            ls = r["last_sweep"]
            line += (
                f"; at the timeout: {ls['complete_nodes']}/{r['n']} complete, alive links {ls['alive_links']}/"
                f"{r['n'] * (r['n'] - 1)}, suspect {ls['suspect_links']}, dead {ls['dead_links']}, missing "
                f"{ls['missing_links']}"
            )
        if "convergence_cpu" in r:
            line += (
                f"; during convergence node CPU sum {fmt(r['convergence_cpu']['sum_pct'], '.0f')} % of a core, "
                f"machine busy {fmt(r.get('convergence_machine_busy_pct'), '.0f')} %"
            )
        if r.get("error"):
            line += f"; ERROR {r['error']}"
        stop = r.get("stop") or {}
        line += f"; stop {fmt(stop.get('stop_s'), '.1f')} s, killed {stop.get('killed', '-')}"
        print(line)


# ---------------------------------------------------------------------------


def code_version() -> str:
    """The library's git commit, with "+changes" when dellm_p2p/ differs from it (nodes import this tree)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "dellm_p2p"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" +changes" if dirty else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100", help="comma-separated network sizes N (default 10,50,100)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="steady-state measuring window [s] (default 10)")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=120.0,
        help="convergence deadline after the last node is ready [s] (default 120)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write all figures to this JSON file")
    parser.add_argument(
        "--gossip-interval", type=float, default=0.5, help="DELLM_GOSSIP_INTERVAL_S for every node [s] (default 0.5)"
    )
    parser.add_argument(
        "--fanout",
        type=int,
        default=NodeConfig.model_fields["fanout"].default,
        help="DELLM_FANOUT (default %(default)s)",
    )
    parser.add_argument(
        "--membership", choices=("swim", "gossip"), default="swim", help="DELLM_MEMBERSHIP (default swim)"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=NodeConfig.model_fields["probe_interval_s"].default,
        help="DELLM_PROBE_INTERVAL_S, SWIM's protocol period [s] (default %(default)s)",
    )
    parser.add_argument(
        "--fp-run-s",
        type=float,
        default=0.0,
        help="steady run watched for false positives [s] (issue 14's benchmark: 60; default 0: skip)",
    )
    parser.add_argument(
        "--drop-rate",
        type=float,
        default=0.05,
        help="share of SWIM datagrams every node drops on purpose, the whole run (default 0.05)",
    )
    parser.add_argument(
        "--detect-timeout-s",
        type=float,
        default=60.0,
        help="deadline for the SIGKILLed node to be dead everywhere [s] (0: skip; default 60)",
    )
    parser.add_argument("--suspect-after-s", type=float, help="DELLM_SUSPECT_AFTER_S (default: the library's)")
    parser.add_argument("--dead-after-s", type=float, help="DELLM_DEAD_AFTER_S (default: the library's)")
    parser.add_argument(
        "--warmup-s", type=float, default=5.0, help="wait after convergence before the window [s] (default 5)"
    )
    parser.add_argument(
        "--ready-timeout-s", type=float, default=600.0, help="deadline for all nodes to be ready [s] (default 600)"
    )
    parser.add_argument("--max-conns", type=int, default=10, help="requests in flight from this script (default 10)")
    parser.add_argument(
        "--rpc-timeout-s", type=float, default=10.0, help="deadline of one poll request [s] (default 10)"
    )
    parser.add_argument(
        "--poll-interval-s", type=float, default=0.2, help="pause between poll sweeps [s] (default 0.2)"
    )
    args = parser.parse_args()
    args.sizes_list = parse_sizes(parser, args.sizes)
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    defaults = NodeConfig.model_fields
    env = {
        "DELLM_GOSSIP_INTERVAL_S": f"{args.gossip_interval:g}",
        "DELLM_FANOUT": str(args.fanout),
        "DELLM_MEMBERSHIP": args.membership,
        "DELLM_PROBE_INTERVAL_S": f"{args.probe_interval:g}",
        "DELLM_BENCH_DROP_RATE": f"{args.drop_rate:g}",
    }
    if args.suspect_after_s is not None:
        env["DELLM_SUSPECT_AFTER_S"] = f"{args.suspect_after_s:g}"
    if args.dead_after_s is not None:
        env["DELLM_DEAD_AFTER_S"] = f"{args.dead_after_s:g}"
    inherited = sorted(k for k in os.environ if k.startswith("DELLM_") and k not in env)
    if inherited:
        progress(f"note: the nodes inherit these settings from the environment: {', '.join(inherited)}")

    def effective(key: str) -> float:
        return float(env.get(f"DELLM_{key.upper()}") or os.environ.get(f"DELLM_{key.upper()}") or defaults[key].default)

    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "membership": args.membership,
            "probe_interval_s": args.probe_interval,
            "push_pull_interval_s": effective("push_pull_interval_s"),
            "drop_rate": args.drop_rate,
            "fp_run_s": args.fp_run_s,
            "gossip_interval_s": args.gossip_interval,
            "fanout": args.fanout,
            "suspect_after_s": effective("suspect_after_s"),
            "dead_after_s": effective("dead_after_s"),
            "settle_s": args.settle_s,
            "warmup_s": args.warmup_s,
            "timeout_s": args.timeout_s,
            "max_conns": args.max_conns,
            "poll_interval_s": args.poll_interval_s,
            "mdns": False,
            "host": HOST,
        },
        "machine": {
            "nproc": os.cpu_count(),
            "mem_gib": psutil.virtual_memory().total / 1024**3,
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
        },
        "code": code_version(),
        "overhead_bytes_hint": "300-400",
        "runs": [],
    }
    status = 0
    try:
        for n in args.sizes_list:
            results["runs"].append({"n": n})
            bench_one(n, args, env, results["runs"][-1])
    except KeyboardInterrupt:
        progress("interrupted: all nodes stopped; partial results follow")
        status = 130
    finally:
        _kill_leftovers()
    overheads = [r["steady"]["measurement_overhead_bytes_per_node"] for r in results["runs"] if r.get("steady")]
    if overheads and all(o is not None for o in overheads):
        low, high = min(overheads), max(overheads)
        results["overhead_bytes_hint"] = str(low) if low == high else f"{low}-{high}"
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    if any("error" in r or not r.get("converged") for r in results["runs"]):
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
