"""Memory of a node's process tree by role, sampled over a long run, and its slope.

``scripts/soak.py --sample-every 60`` (and ``bench_engine_env.py``) use this module: once a minute it
reads, for every node it knows, the RSS and PSS of each process of the
node's tree and sums them by role:

* ``node``: the ``dellm-node`` Python process itself (server, membership,
  coordinator work);
* ``engine_core``: vLLM's ``VLLM::EngineCore`` process (scheduler, KV-cache
  block pool, detokenizer);
* ``worker``: vLLM's ``VLLM::Worker`` process (model weights, KV cache,
  PyTorch);
* ``other``: anything else under the node (multiprocessing's resource
  tracker).

RSS counts shared pages once per process, so a tree's RSS sum is an upper
bound; PSS (``/proc/PID/smaps_rollup``) divides shared pages among the
processes that map them and sums to the tree's real share of RAM. PSS is
``None`` where the file is not readable (another user's process).

The slope is an ordinary least-squares fit of bytes against minutes over the
samples of the second half of the load (MiB per minute): a leak shows as a
steady positive slope, a cache that levels off as a slope that falls to ~0.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

ROLES = ("node", "engine_core", "worker", "other")
MIB = 2**20


def role_of(process: Any, root_pid: int) -> str:
    """``node``, ``engine_core``, ``worker`` or ``other`` for one ``psutil.Process`` of a node's tree."""
    if process.pid == root_pid:
        return "node"
    try:
        title = " ".join(process.cmdline()) or process.name()
    except Exception:  # gone or not ours: counted as other
        return "other"
    if "VLLM::EngineCore" in title or "EngineCore" in process.name():
        return "engine_core"
    if "VLLM::Worker" in title or "Worker" in process.name():
        return "worker"
    return "other"


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of one process from ``/proc/PID/smaps_rollup`` [bytes]; ``None`` if unreadable."""
    with contextlib.suppress(OSError, ValueError):
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    return None


def process_tree(pid: int) -> list[Any] | None:
    """``pid`` and all its descendants as ``psutil.Process`` objects; ``None`` when it is gone."""
    import psutil  # installed with vLLM

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return None


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` and all its descendants [bytes]; ``None`` when it is gone."""
    import psutil  # installed with vLLM

    processes = process_tree(pid)
    if processes is None:
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def own_rss_bytes() -> int:
    """Resident memory of this process alone (not the nodes it started) [bytes]."""
    import psutil

    return psutil.Process().memory_info().rss


def sample_tree(pid: int) -> dict[str, dict[str, int | None]] | None:
    """``{role: {"rss": bytes, "pss": bytes | None}}`` over ``pid`` and its descendants; ``None`` when gone."""
    import psutil  # installed with vLLM

    processes = process_tree(pid)
    if processes is None:
        return None
    by_role: dict[str, dict[str, int | None]] = {}
    for process in processes:
        try:
            rss = process.memory_info().rss
        except psutil.Error:
            continue
        role = by_role.setdefault(role_of(process, pid), {"rss": 0, "pss": 0})
        role["rss"] += rss
        pss = pss_bytes(process.pid)
        role["pss"] = None if pss is None or role["pss"] is None else role["pss"] + pss
    return by_role


def slope_mib_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, bytes)`` points [MiB/min]; ``None`` with fewer than 2 distinct times."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return None
    cov = sum((t - mean_t) * (y - mean_y) for t, y in points)
    return cov / var_t * 60 / MIB


@dataclass
class MemorySample:
    """One reading of one node: seconds into the run and memory by role (``None`` if the node was down)."""

    at_s: float
    roles: dict[str, dict[str, int | None]] | None


@dataclass
class MemorySeries:
    """Every reading of one node's tree over the run."""

    name: str
    samples: list[MemorySample] = field(default_factory=list)

    def points(self, role: str | None, metric: str, since_s: float, until_s: float) -> list[tuple[float, float]]:
        """``(seconds, bytes)`` of ``role`` (``None``: the whole tree) between ``since_s`` and ``until_s``."""
        points = []
        for sample in self.samples:
            if sample.roles is None or not since_s <= sample.at_s <= until_s:
                continue
            if role and role not in sample.roles:
                continue
            chosen = [sample.roles[role]] if role else list(sample.roles.values())
            values = [r[metric] for r in chosen]
            if any(v is None for v in values):
                continue
            points.append((sample.at_s, float(sum(values))))
        return points

    def summary(self, load_s: float) -> dict[str, Any]:
        """Per role and for the whole tree: first and last value under load [bytes] and the
        second-half slope [MiB/min], for RSS and PSS."""
        half = load_s / 2
        out: dict[str, Any] = {}
        for role in (*ROLES, None):
            key = role or "total"
            entry: dict[str, Any] = {}
            for metric in ("rss", "pss"):
                every = self.points(role, metric, 0.0, load_s)
                if not every:
                    continue
                entry[metric] = {
                    "first_bytes": int(every[0][1]),
                    "last_bytes": int(every[-1][1]),
                    "slope_second_half_mib_per_min": slope_mib_per_min(self.points(role, metric, half, load_s)),
                    "slope_first_half_mib_per_min": slope_mib_per_min(self.points(role, metric, 0.0, half)),
                }
            if entry:
                out[key] = entry
        return out


def throughput_halves(answered_at_s: list[float], load_s: float) -> dict[str, float | None]:
    """Questions answered per minute in the first and second half of the load, and their ratio."""
    half = load_s / 2
    if half <= 0:
        return {"first_per_min": None, "second_per_min": None, "ratio": None}
    first = sum(1 for t in answered_at_s if t < half) / (half / 60)
    second = sum(1 for t in answered_at_s if half <= t <= load_s) / (half / 60)
    return {"first_per_min": first, "second_per_min": second, "ratio": second / first if first else None}


def report_memory(result: dict[str, Any]) -> None:
    """A rich table: per node and role, first → last RSS and PSS [MiB] and the slopes [MiB/min]."""
    from rich.console import Console
    from rich.table import Table

    memory = result.get("memory")
    if not memory:
        return
    table = Table(
        title=f"memory by role, sampled every {memory['every_s']:g} s "
        "(slope: least squares over the second half of the load; first half in brackets)",
    )
    for column in ("node", "role", "RSS first → last (MiB)", "RSS slope (MiB/min)", "PSS first → last (MiB)"):
        table.add_column(column, justify="left" if column in ("node", "role") else "right")
    table.add_column("PSS slope (MiB/min)", justify="right")

    def slope(value: dict[str, Any], metric: str) -> str:
        if metric not in value:
            return "n/a"
        second = value[metric]["slope_second_half_mib_per_min"]
        first = value[metric]["slope_first_half_mib_per_min"]
        fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"  # noqa: E731
        return f"{fmt(second)} [{fmt(first)}]"

    def span(value: dict[str, Any], metric: str) -> str:
        if metric not in value:
            return "n/a"
        return f"{value[metric]['first_bytes'] / MIB:,.0f} → {value[metric]['last_bytes'] / MIB:,.0f}"

    for node in memory["nodes"]:
        label = node["name"] + (f" ({node['variant']})" if node.get("variant") else "")
        for role, value in node["summary"].items():
            table.add_row(label, role, span(value, "rss"), slope(value, "rss"), span(value, "pss"), slope(value, "pss"))
            label = ""
    tp = memory["throughput"]
    per_min = "n/a" if tp["first_per_min"] is None else f"{tp['first_per_min']:.1f} → {tp['second_per_min']:.1f}"
    ratio = "n/a" if tp["ratio"] is None else f"{tp['ratio']:.3f}"
    table.caption = f"answered per minute, first half → second half: {per_min} (ratio {ratio})"
    # Piped to a file, rich would wrap at 80 columns; the figures are for a log, keep rows whole.
    Console(width=None if sys.stdout.isatty() else 150).print(table)
