"""``dellm``: the user's command line.

``dellm generate --peer ws://… "question"`` streams an answer from one node;
``dellm stats --peer ws://…`` shows a node's counters. Errors are one line on
stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from ..client import PeerClient, PeerError
from ..protocol import MAX_CHOICES, SamplingParams, Token
from ..runtime import run, setup_logging

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug logs.")
def main(verbose: int) -> None:
    """Talk to a dellm peer-to-peer network of language-model nodes."""
    setup_logging(verbose)


def _peer_option(f):
    return click.option("--peer", required=True, metavar="URL", help="A node's ws:// URL.")(f)


@main.command()
@_peer_option
@click.argument("question")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("-n", "--samples", "n", type=click.IntRange(1, MAX_CHOICES), default=1, show_default=True)
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=120.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the completion as JSON.")
def generate(
    peer: str, question: str, max_tokens: int, temperature: float, top_p: float, n: int, timeout: float, as_json: bool
) -> None:
    """Stream one node's answer to QUESTION (no coordination, no voting)."""
    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="QUESTION")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n, logprobs=as_json)
    sys.exit(run(_generate(peer, question, params, timeout, as_json)))


async def _generate(peer: str, question: str, params: SamplingParams, timeout_s: float, as_json: bool) -> int:
    try:
        async with await PeerClient.connect(peer, timeout_s=min(timeout_s, 10.0)) as client:
            messages = [{"role": "user", "content": question}]
            if as_json:
                result = await client.complete(messages=messages, params=params, timeout_s=timeout_s)
                out.print_json(
                    json.dumps(
                        {
                            "node": client.remote.model_dump(),
                            "texts": result.texts,
                            "logprobs": result.logprobs,
                            "done": result.done.model_dump(),
                            "client_first_token_ms": result.first_token_ms,
                            "client_total_ms": result.total_ms,
                        }
                    )
                )
                return 0
            done = None
            samples: dict[int, list[str]] = {}
            async for item in client.generate(messages=messages, params=params, timeout_s=timeout_s):
                if isinstance(item, Token) and params.n == 1:
                    out.print(item.text, end="", markup=False)
                elif isinstance(item, Token):  # several samples: print each whole at the end
                    samples.setdefault(item.index, []).append(item.text)
                else:
                    done = item
            for index in sorted(samples):
                out.print(f"[bold]sample {index + 1}:[/] " + "".join(samples[index]).strip())
            out.print()
            if done is not None:
                t = done.timings
                err.print(
                    f"[dim]{client.remote.model} on {client.remote.name}: {done.usage.completion_tokens} tokens, "
                    f"first token {t.first_token_ms or 0:.0f} ms, total {t.total_ms:.0f} ms, "
                    f"finish {','.join(done.finish_reasons)}[/]"
                )
            return 0
    except PeerError as exc:
        err.print(f"dellm: error: {exc}")
        return 1


@main.command()
@_peer_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(peer: str, as_json: bool) -> None:
    """Show a node's counters."""
    sys.exit(run(_stats(peer, as_json)))


async def _stats(peer: str, as_json: bool) -> int:
    try:
        async with await PeerClient.connect(peer) as client:
            rtt = await client.ping()
            result = await client.stats()
    except PeerError as exc:
        err.print(f"dellm: error: {exc}")
        return 1
    data = result.model_dump(exclude={"type", "nonce"}) | {"rtt_ms": round(rtt, 3)}
    if as_json:
        out.print_json(json.dumps(data))
        return 0
    table = Table(title=f"{client.remote.name} at {peer}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in data.items():
        table.add_row(key, str(value))
    out.print(table)
    return 0


if __name__ == "__main__":
    main()
