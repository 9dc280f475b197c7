"""Memory of one real ``dellm-node`` (a model, vLLM's engine core and worker): what a container needs.

    .venv/bin/python scripts/node_memory.py [--model smollm2-135m] [--requests 8]

Starts one node (mDNS off, its own state directory), samples the RSS and PSS of its process tree
once it is ready and again after ``--requests`` chat requests, prints MiB by process and the
totals, and stops the node. RSS counts pages shared between the processes once per process; PSS
(``/proc/PID/smaps_rollup``) shares them out and sums to the tree's real share of memory, the
figure a container's memory limit is compared against (docs/deploy.md, "Resources").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile

import psutil

from dellm_p2p.client import PeerClient
from dellm_p2p.local import NodeProcess

MIB = 2**20


def pss(pid: int) -> int:
    """Proportional set size of one process [bytes] (0 when unreadable)."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def sample(pid: int) -> dict[str, tuple[int, int]]:
    """Process title -> (RSS, PSS) [bytes] for the node and every process under it."""
    root = psutil.Process(pid)
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            title = "dellm-node" if proc.pid == pid else (proc.name() or str(proc.pid))
            out[f"{title} ({proc.pid})"] = (proc.memory_info().rss, pss(proc.pid))
    return out


def report(label: str, tree: dict[str, tuple[int, int]]) -> None:
    print(f"{label}:")
    for title, (rss, share) in tree.items():
        print(f"  {title:<32} RSS {rss / MIB:8,.0f} MiB   PSS {share / MIB:8,.0f} MiB")
    rss_total, pss_total = (sum(v[i] for v in tree.values()) for i in (0, 1))
    print(f"  {'total':<32} RSS {rss_total / MIB:8,.0f} MiB   PSS {pss_total / MIB:8,.0f} MiB")


async def ask(url: str, count: int) -> None:
    async with await PeerClient.connect(url, name="node-memory") as client:
        for i in range(count):
            question = [{"role": "user", "content": f"Name a capital city ({i})."}]
            async for _ in client.generate(messages=question):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the node's --model (default: the embedded default)")
    parser.add_argument("--requests", type=int, default=8, help="chat requests before the second sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dellm-node-memory-") as state:
        node_args = ["--name", "node-memory", "--no-mdns", "--state-dir", state]
        node = NodeProcess(node_args + (["--model", args.model] if args.model else []))
        try:
            node.wait_ready(600)
            report("ready", sample(node.proc.pid))
            asyncio.run(ask(node.url, args.requests))
            report(f"after {args.requests} requests", sample(node.proc.pid))
        finally:
            node.stop(60)


if __name__ == "__main__":
    main()
