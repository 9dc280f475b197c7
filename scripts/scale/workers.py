"""bench_scale's worker processes: each hosts a share of the simulated nodes and answers commands over a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter, deque
from typing import Any

from harness.stats import pct

from dellm_p2p.membership import SwimMembership
from dellm_p2p.peer_table import PeerState
from dellm_p2p.protocol import RewardRecord
from dellm_p2p.runtime import run
from scale.nodes import WATCH, CountingPool, LogCounter, SimNode, install_log_counter

# ---------------------------------------------------------------------------
# Worker process: hosts a share of the nodes, answers commands over a pipe


def worker_entry(conn, worker_id: int, settings: dict[str, Any]) -> None:
    """Entry point of a worker process (``spawn``)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if settings["worker_nice"]:
        with contextlib.suppress(OSError):
            os.nice(settings["worker_nice"])
    logs = install_log_counter(f"worker {worker_id}")
    with contextlib.suppress(KeyboardInterrupt):
        run(_Worker(conn, worker_id, settings, logs).serve())


def _recording(apply_member, observer: int, steady: dict):
    """``PeerTable.apply_member`` that also records (observer, subject) pairs set suspect or dead."""

    def apply(node_id: str, state: PeerState, **fields: Any) -> PeerState | None:
        if state is PeerState.DEAD:
            steady["dead"].add((observer, node_id))
        elif state is PeerState.SUSPECT:
            steady["suspect"].add((observer, node_id))
        return apply_member(node_id, state, **fields)

    return apply


class _Worker:
    def __init__(self, conn, worker_id: int, settings: dict[str, Any], logs: LogCounter):
        self.conn, self.worker_id, self.settings, self.logs = conn, worker_id, settings, logs
        self.nodes: dict[int, SimNode] = {}
        self.n_total = 0
        self.ok_since: dict[int, float | None] = {}
        self.lags: deque[float] = deque(maxlen=20_000)
        self.mark = (time.process_time(), time.monotonic(), 0, 0)
        self.profiler: Any = None

    async def serve(self) -> None:
        lag_task = asyncio.create_task(self._lag_monitor())
        try:
            while True:
                try:
                    message = await asyncio.to_thread(self.conn.recv)
                except (EOFError, OSError):  # the main process is gone
                    break
                command = message.pop("cmd")
                try:
                    reply = await getattr(self, f"cmd_{command}")(**message)
                except Exception as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                self.conn.send(reply)
                if command == "stop":
                    break
        finally:
            lag_task.cancel()

    async def _lag_monitor(self, period_s: float = 0.05) -> None:
        """Event-loop lag: how late a 50 ms sleep wakes up [ms]."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(period_s)
            self.lags.append((time.perf_counter() - started - period_s) * 1000)

    async def cmd_ping(self) -> dict:
        return {"pid": os.getpid()}

    async def cmd_start(self, indices: list[int], bootstrap: list[str], n_total: int) -> dict:
        self.n_total = n_total
        urls = {}
        for i in indices:
            node = SimNode(i, self.settings)
            urls[i] = await node.start(bootstrap)
            self.nodes[i] = node
            self.ok_since[i] = None
        return {"urls": urls, "ids": {i: self.nodes[i].node_id for i in indices}, "t_started": time.time()}

    async def cmd_set_accuracy(self, accuracy: dict[int, float], seed: int) -> dict:
        """SIMULATION: give every node of this worker its hidden accuracy (and a seeded draw); reset peaks."""
        for i, node in self.nodes.items():
            node.engine.accuracy = accuracy.get(i)
            node.engine.rng = random.Random(seed * 100_003 + i)
            node.engine.peak = 0
        return {}

    async def cmd_peaks(self) -> dict:
        """Per node index: the most requests its engine ran at once since :meth:`cmd_set_accuracy`."""
        return {"peaks": {i: node.engine.peak for i, node in self.nodes.items()}}

    async def cmd_status(self) -> dict:
        """Membership: per node, are all N-1 others in its table and alive?"""
        want = self.n_total - 1
        counts = Counter()
        for i, node in self.nodes.items():
            records = node.table.records()
            alive = sum(1 for p in records if p.state is PeerState.ALIVE)
            suspect = sum(1 for p in records if p.state is PeerState.SUSPECT)
            counts["alive"] += alive
            counts["suspect"] += suspect
            counts["dead"] += len(records) - alive - suspect
            counts["missing"] += max(0, want - len(node.table))
            now = time.time()
            if alive >= want:
                self.ok_since[i] = self.ok_since[i] or now
            else:
                self.ok_since[i] = None
        done = [t for t in self.ok_since.values() if t is not None]
        return {
            "complete": len(done),
            "nodes": len(self.nodes),
            "ok_since_max": max(done) if len(done) == len(self.nodes) else None,
            **counts,
        }

    async def cmd_steady_start(self, drop_rate: float) -> dict:
        """Start a steady run: every node drops ``drop_rate`` of its SWIM datagrams; watch for false positives."""
        for node in self.nodes.values():
            if isinstance(node.membership, SwimMembership):
                node.membership.drop_rate = drop_rate
        self.steady = {
            "bytes0": sum(n.bytes_total() for n in self.nodes.values()),
            "cpu0": time.process_time(),
            "wall0": time.monotonic(),
            "dead": set(),
            "suspect": set(),
        }
        self.steady_task = asyncio.create_task(self._watch_states(self.steady))
        return {}

    async def _watch_states(self, steady: dict, period_s: float = 0.25) -> None:
        """Record every (observer, subject) pair seen suspect or dead during the steady run.

        SWIM nodes report each state change through ``PeerTable.apply_member``: hooked, every change is
        seen, however brief, at no cost. Heartbeat gossip changes states in ``sweep``: polled. (Polling
        every table, N rows each, every 0.25 s was itself ~50k row checks per worker per pass at N = 500,
        enough loop lag to cause the suspicions it was counting.)
        """
        polled = []
        for i, node in self.nodes.items():
            if isinstance(node.membership, SwimMembership):
                node.table.apply_member = _recording(node.table.apply_member, i, steady)
            else:
                polled.append((i, node))
        while polled:
            for i, node in polled:
                for p in node.table.records():
                    if p.state is PeerState.DEAD:
                        steady["dead"].add((i, p.node_id))
                    elif p.state is PeerState.SUSPECT:
                        steady["suspect"].add((i, p.node_id))
            await asyncio.sleep(period_s)

    async def cmd_steady_stop(self) -> dict:
        self.steady_task.cancel()
        for node in self.nodes.values():
            node.table.__dict__.pop("apply_member", None)  # unhook (see _watch_states)
        st = self.steady
        for node in self.nodes.values():
            if isinstance(node.membership, SwimMembership):
                node.membership.drop_rate = 0.0
        return {
            "bytes": sum(n.bytes_total() for n in self.nodes.values()) - st["bytes0"],
            "cpu_s": time.process_time() - st["cpu0"],
            "wall_s": time.monotonic() - st["wall0"],
            "nodes": len(self.nodes),
            "dead_pairs": [list(x) for x in st["dead"]],
            "suspect_pairs": len(st["suspect"]),
            "dropped": sum(getattr(n.membership, "dropped_on_purpose", 0) for n in self.nodes.values()),
        }

    async def cmd_crash(self, index: int) -> dict:
        node = self.nodes.pop(index)
        self.ok_since.pop(index, None)
        await node.crash()
        return {"t_crash": time.time()}

    async def cmd_dead_status(self, node_id: str) -> dict:
        """How many of our nodes list ``node_id`` dead (and so out of routing), and since when (first seen)."""
        now = time.time()
        seen = self.__dict__.setdefault("dead_seen", {})
        for i, node in self.nodes.items():
            p = node.table.get(node_id)
            # Dead is out of routing by definition (PeerTable.alive: alive or suspect); checking alive()
            # here walked N rows per node per poll, loop lag during the very detection being timed.
            if p is not None and p.state is PeerState.DEAD:
                seen.setdefault((node_id, i), now)
        marks = [t for (nid, _), t in seen.items() if nid == node_id]
        return {"marked": len(marks), "nodes": len(self.nodes), "first": min(marks, default=None),
                "last": max(marks, default=None)}  # fmt: skip

    async def cmd_watch(self, record_id: str) -> dict:
        WATCH["id"], WATCH["hits"] = record_id, {}
        return {}

    async def cmd_inject(self, index: int, record: dict) -> dict:
        """Node ``index`` issues the record (signed with its identity, rewarding a peer it knows) and gossips it."""
        node = self.nodes[index]
        rewarded = next((p.node_id for p in node.table.records()), node.node_id)
        reward = node.identity.sign_reward(
            RewardRecord(issuer=node.node_id, seq=node.identity.next_seq(), node_id=rewarded, ts=time.time(), **record)
        )
        states = Counter(p.state.value for p in node.table.records())
        t_inject = time.time()
        node.fitness.receive([reward])
        return {"t_inject": t_inject, "injector_table": dict(states)}

    async def cmd_gossip_status(self) -> dict:
        return {"hits": dict(WATCH["hits"])}

    async def cmd_stats(self) -> dict:
        """Since the last call: CPU [s] and wall [s] of this process, event-loop lag, connections opened."""
        cpu0, wall0, opened0, rounds0 = self.mark
        cpu, wall = time.process_time(), time.monotonic()
        rounds = sum(getattr(n.membership, "heartbeat", 0) for n in self.nodes.values())  # +1 per gossip round
        self.mark = (cpu, wall, CountingPool.opened, rounds)
        lags = sorted(self.lags)
        self.lags.clear()
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = None
        return {
            "cpu_s": cpu - cpu0,
            "wall_s": wall - wall0,
            "lag_ms_p50": pct(lags, 50),
            "lag_ms_p99": pct(lags, 99),
            "lag_ms_max": lags[-1] if lags else None,
            "connects": CountingPool.opened - opened0,
            "rounds": rounds - rounds0,
            "nodes": len(self.nodes),
            "pooled": sum(len(n.membership.pool) for n in self.nodes.values()),
            "fds": fds,
            "rss_mib": _rss_mib(),
            "warnings": dict(self.logs.counts),
        }

    async def cmd_profile(self, path: str | None) -> dict:
        """Start cProfile (CPU time), or stop it and dump the stats to ``path``."""
        import cProfile

        if path is None:
            self.profiler = cProfile.Profile(time.process_time)
            self.profiler.enable()
        else:
            self.profiler.disable()
            self.profiler.dump_stats(path)
        return {}

    async def cmd_stop(self) -> dict:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await asyncio.gather(*(n.close() for n in self.nodes.values()), return_exceptions=True)
        return {}


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------
# Main process side


class WorkerHandle:
    def __init__(self, ctx, worker_id: int, indices: list[int], settings: dict[str, Any]):
        self.worker_id, self.indices = worker_id, indices
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_entry, args=(child, worker_id, settings), daemon=True)
        self.proc.start()
        child.close()
        self.lock = asyncio.Lock()

    async def call(self, cmd: str, timeout_s: float = 120.0, **args) -> dict:
        async with self.lock:
            self.conn.send({"cmd": cmd, **args})
            async with asyncio.timeout(timeout_s):
                if not await asyncio.to_thread(self.conn.poll, timeout_s):
                    raise TimeoutError(f"worker {self.worker_id} did not answer {cmd} within {timeout_s:g} s")
                reply = self.conn.recv()
        if "error" in reply:
            raise RuntimeError(f"worker {self.worker_id} failed {cmd}: {reply['error']}")
        return reply

    def reap(self, timeout_s: float = 20.0) -> None:
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.terminate()  # our own child, by its handle
            self.proc.join(5)
        self.conn.close()


async def call_all(workers: list[WorkerHandle], cmd: str, timeout_s: float = 120.0, **args) -> list[dict]:
    return await asyncio.gather(*(w.call(cmd, timeout_s, **args) for w in workers))


def stats_summary(stats: list[dict]) -> dict[str, Any]:
    """Workers' stats over one phase: CPU in cores, worst loop lag, connections opened."""
    wall = max(s["wall_s"] for s in stats) or 1e-9
    lags99 = [s["lag_ms_p99"] for s in stats if s["lag_ms_p99"] is not None]
    lagsmax = [s["lag_ms_max"] for s in stats if s["lag_ms_max"] is not None]
    nodes, rounds, cpu = sum(s["nodes"] for s in stats), sum(s["rounds"] for s in stats), sum(s["cpu_s"] for s in stats)
    return {
        "wall_s": round(wall, 2),
        "workers_cpu_cores": round(cpu / wall, 2),
        "gossip_rounds_per_node_s": round(rounds / max(1, nodes) / wall, 2),
        "cpu_ms_per_node_round": round(cpu * 1000 / rounds, 2) if rounds else None,
        "loop_lag_ms_p99_worst": round(max(lags99), 1) if lags99 else None,
        "loop_lag_ms_max": round(max(lagsmax), 1) if lagsmax else None,
        "connects_per_s": round(sum(s["connects"] for s in stats) / wall, 1),
        "pooled_connections": sum(s["pooled"] for s in stats),
        "fds": sum(s["fds"] or 0 for s in stats),
        "rss_mib_total": round(sum(s["rss_mib"] or 0 for s in stats), 1),
    }
