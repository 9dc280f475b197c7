"""Ask the swarm from Python: the final answer, then the same question as a stream of events.

Start a few nodes first (e.g. `bash scripts/main.sh` or `.venv/bin/dellm-node` on several machines), then:

    .venv/bin/python examples/ask_swarm.py ["question"] [--peer ws://host:port]

For a cluster with a key, set DELLM_CLUSTER_KEY_FILE to its key file.
"""

from __future__ import annotations

import argparse

from dellm_p2p import ChunkPlanned, ChunkVoted, Final, Swarm, SwarmError, SynthesisToken
from dellm_p2p.runtime import run
from dellm_p2p.security import cluster_key_from_env


async def main(question: str, peers: list[str]) -> None:
    async with Swarm(peers=peers, mdns_interfaces=["127.0.0.1"], cluster_key=cluster_key_from_env()) as swarm:
        answer = await swarm.ask(question)  # the default options; e.g. redundancy=7, strategy="weighted"
        print(f"answer: {answer.text}")
        print(f"confidence (the lowest chunk agreement): {answer.confidence:.0%}")
        for trace in answer.chunks:
            vote = trace.vote
            kept = " (no plurality: the greedy reply was kept)" if vote.anchored else ""
            print(f"  {trace.chunk.id} {trace.chunk.operation}: {vote.answer!r}, agreement {vote.agreement:.0%}{kept}")

        async for event in swarm.stream(question):
            if isinstance(event, ChunkPlanned):
                print(f"chunk {event.chunk.id}: {event.chunk.text}")
            elif isinstance(event, ChunkVoted):
                print(f"vote {event.chunk_id}: {event.result.answer!r} ({event.result.agreement:.0%})")
            elif isinstance(event, SynthesisToken):
                print(event.text, end="", flush=True)
            elif isinstance(event, Final):
                print(f"\n[{event.answer.total_ms:.0f} ms, {len(event.answer.rewards)} rewards]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("question", nargs="?", default="What is the capital of France?")
    parser.add_argument("--peer", action="append", default=[])
    args = parser.parse_args()
    try:
        run(main(args.question, args.peer))
    except SwarmError as exc:
        raise SystemExit(f"error: {exc}") from None
