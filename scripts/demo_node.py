"""Main job (single node): start a dellm-node with the embedded default model
on 127.0.0.1, stream an answer from it over the wire protocol, stop it.

    .venv/bin/python scripts/demo_node.py ["your question"]
"""

from __future__ import annotations

import sys
import time

from rich.console import Console

from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.local import NodeProcess, NodeStartError
from dellm_p2p.protocol import SamplingParams, Token
from dellm_p2p.runtime import run
from dellm_p2p.security import cluster_key_from_env

console = Console(highlight=False, soft_wrap=True)


async def ask(url: str, question: str) -> None:
    async with await PeerClient.connect(url, cluster_key=cluster_key_from_env()) as client:
        console.print(f"[bold]{client.remote.name}[/] serves {client.remote.model} (node {client.remote.node_id})")
        console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] ", end="")
        params = SamplingParams(max_tokens=128, temperature=0.0, logprobs=True)
        async for item in client.generate(messages=[{"role": "user", "content": question}], params=params):
            if isinstance(item, Token):
                console.print(item.text, end="", markup=False)
            else:
                t, u = item.timings, item.usage
                console.print(
                    f"\n[dim]{u.completion_tokens} tokens · prompt {u.prompt_tokens} tokens · "
                    f"first token {t.first_token_ms:.0f} ms · total {t.total_ms:.0f} ms · "
                    f"finish {item.finish_reasons[0]}[/]"
                )


def main() -> int:
    question = " ".join(sys.argv[1:]) or "What is the capital of France?"
    started = time.monotonic()
    console.print("[dim]starting dellm-node with the embedded default model (about a minute on CPU)…[/]")
    with NodeProcess(["--name", "demo", "--state-dir", ".dellm-demo-state"]) as node:
        try:
            node.wait_ready(timeout_s=600)
        except NodeStartError as exc:
            console.print(f"demo: error: {exc}")
            return 1
        console.print(f"[dim]node ready at {node.url} after {time.monotonic() - started:.0f} s[/]")
        try:
            run(ask(node.url, question))
        except PeerError as exc:
            console.print(f"demo: error: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
