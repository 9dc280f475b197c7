"""Stream an answer from one dellm node.

Start a node first (`.venv/bin/dellm-node`), then:

    .venv/bin/python examples/stream_from_node.py [ws://127.0.0.1:7070] ["question"]

For a node with a cluster key, set DELLM_CLUSTER_KEY_FILE to its key file.
"""

from __future__ import annotations

import sys

from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.protocol import SamplingParams, Token
from dellm_p2p.runtime import run
from dellm_p2p.security import cluster_key_from_env


async def main(url: str, question: str) -> None:
    async with await PeerClient.connect(url, cluster_key=cluster_key_from_env()) as node:
        print(f"{node.remote.name} serves {node.remote.model}")
        params = SamplingParams(max_tokens=128, temperature=0.0)
        async for item in node.generate(messages=[{"role": "user", "content": question}], params=params):
            if isinstance(item, Token):
                print(item.text, end="", flush=True)
            else:
                print(f"\n[{item.usage.completion_tokens} tokens in {item.timings.total_ms:.0f} ms]")


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:7070"
    question = sys.argv[2] if len(sys.argv) > 2 else "What is the capital of France?"
    try:
        run(main(url, question))
    except PeerError as exc:
        sys.exit(f"error: {exc}")
