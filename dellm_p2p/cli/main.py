"""``dellm``: the user's command line.

``dellm generate --peer ws://… "question"`` streams an answer from one node;
``dellm stats --peer ws://…`` shows a node's counters; ``dellm keygen`` writes
a cluster key. Errors are one line on stderr with a non-zero exit code, never
a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ..client import PeerClient, PeerError
from ..coordinator.vote import STRATEGIES
from ..discovery import browse
from ..protocol import MAX_CHOICES, ModelFitness, PeerRow, SamplingParams, Token
from ..runtime import run, setup_logging
from ..security import (
    KEY_FILE_ENV,
    SecurityConfigError,
    client_ssl_context,
    default_key_path,
    load_cluster_key,
    write_key_file,
)
from .learn import learn
from .model_fitness import model_fitness_table
from .options import peer_url
from .progress import show_progress
from .up import down, up

err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped (not a terminal), tables keep their full values: rich would cut them to 80 columns ("ws:/…").
PIPED_WIDTH = 10_000
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="-v: warnings, -vv: info, -vvv: debug logs.")
def main(verbose: int) -> None:
    """Talk to a dellm peer-to-peer network of language-model nodes."""
    # A command prints its own one-line errors; library warnings (an unreachable peer) are noise here.
    setup_logging(verbose - 1)


def _peer_option(f):
    return click.option("--peer", required=True, metavar="URL", callback=peer_url, help="A node's ws:// URL.")(f)


def _security_options(f):
    """``--cluster-key-file`` and ``--tls-ca``, turned into one ``security`` argument: PeerClient/Swarm kwargs."""
    f = click.option(
        "--tls-ca",
        type=click.Path(exists=True, dir_okay=False),
        envvar="DELLM_TLS_CA",
        help="PEM CA bundle to verify wss:// nodes (default: system CAs). Env: DELLM_TLS_CA.",
    )(f)
    return click.option(
        "--cluster-key-file",
        type=click.Path(exists=True, dir_okay=False),
        envvar=KEY_FILE_ENV,
        help=f"The cluster's shared key (see `dellm keygen`), for nodes that require one. Env: {KEY_FILE_ENV}.",
    )(f)


def _answer_options(f):
    """The :class:`~dellm_p2p.coordinator.pipeline.AskOptions` flags of ``ask`` and ``chat``, with its defaults."""
    from ..coordinator.pipeline import AskOptions

    d = AskOptions()
    for option in reversed(
        [
            click.option("--strategy", type=click.Choice(STRATEGIES), default=d.strategy, show_default=True),
            click.option(
                "--redundancy", "-k", type=click.IntRange(1, 16), default=d.redundancy, show_default=True,
                help="Answers per chunk, the greedy anchor included (1 = one greedy node).",
            ),
            click.option(
                "--temperature", type=click.FloatRange(0, 2), default=d.temperature, show_default=True,
                help="Temperature of the sampled answers.",
            ),
            click.option(
                "--top-p", type=click.FloatRange(0, 1, min_open=True), default=d.top_p, show_default=True,
                help="Top-p of the sampled answers.",
            ),
            click.option(
                "--anchor/--no-anchor", default=d.anchor, show_default=True,
                help="One answer per chunk is the best peer's greedy reply, kept when no answer has a plurality.",
            ),
            click.option(
                "--program-aided/--no-program-aided", default=d.program_aided, show_default=True,
                help="One-sentence math: peers write the expression, the coordinator computes it.",
            ),
            click.option("--max-tokens", type=click.IntRange(1, 4096), default=d.max_tokens, show_default=True),
            click.option(
                "--decompose", type=click.Choice(["rules", "llm", "none"]), default=d.decompose, show_default=True
            ),
            click.option(
                "--timeout", type=click.FloatRange(0, min_open=True), default=d.timeout_s, show_default=True,
                help="Seconds.",
            ),
        ]
    ):  # fmt: skip
        f = option(f)
    return f


def _options_and_security(opts: dict[str, Any]):
    """``(AskOptions, security kwargs)`` from the flags of :func:`_answer_options` and :func:`_security_options`.

    Raises:
        click.BadParameter: an option value the coordinator refuses (one line).
    """
    from ..coordinator.errors import SwarmError
    from ..coordinator.pipeline import AskOptions

    security = _security(opts.pop("cluster_key_file"), opts.pop("tls_ca"))
    opts["timeout_s"] = opts.pop("timeout")
    try:
        return AskOptions(**opts).checked(), security
    except SwarmError as exc:
        raise click.BadParameter(str(exc)) from None


async def _in_swarm(body, options, discover_timeout_s: float, security: dict[str, Any], **swarm_args: Any) -> int:
    """Join the network as a :class:`~dellm_p2p.swarm.Swarm` and return ``await body(swarm)`` (an exit code).

    A network that cannot answer (``SwarmError``, ``PeerError``) is one line on stderr and exit code 1.
    """
    from ..swarm import Swarm, SwarmError

    try:
        async with Swarm(options=options, discover_timeout_s=discover_timeout_s, **security, **swarm_args) as swarm:
            return await body(swarm)
    except (SwarmError, PeerError) as exc:
        err.print(f"dellm: error: {exc}", markup=False)
        return 1


def _security(cluster_key_file: str | None, tls_ca: str | None) -> dict[str, Any]:
    """``cluster_key`` and ``ssl_context`` keyword arguments from the options; a bad file is a usage error."""
    try:
        return {
            "cluster_key": load_cluster_key(cluster_key_file) if cluster_key_file else None,
            "ssl_context": client_ssl_context(tls_ca) if tls_ca else None,
        }
    except SecurityConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file (nodes still using the old key lock out).")
def keygen(path: str | None, force: bool) -> None:
    """Write a new random key to PATH (default ~/.config/dellm/cluster.key), file mode 0600.

    The key serves either use. As the cluster key: copy the file to every
    node (dellm-node --cluster-key-file PATH) and to the clients that may use
    the cluster (dellm ... --cluster-key-file PATH). As the HTTP API key: give
    it to the node (dellm-node --api-key-file PATH, dellm up --api-key-file
    PATH); clients send its text as 'Authorization: Bearer KEY'.
    """
    try:
        written = write_key_file(Path(path) if path else default_key_path(), force=force)
    except SecurityConfigError as exc:
        err.print(f"dellm: error: {exc}", markup=False)
        sys.exit(1)
    click.echo(
        f"wrote a new key to {written} (mode 0600); use it as the cluster key (--cluster-key-file {written}) "
        f"or as the HTTP API key (--api-key-file {written}; clients send 'Authorization: Bearer <its text>')"
    )


@main.command()
@_peer_option
@_security_options
@click.argument("question")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("-n", "--samples", "n", type=click.IntRange(1, MAX_CHOICES), default=1, show_default=True)
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=120.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the completion as JSON.")
def generate(
    peer: str,
    question: str,
    max_tokens: int,
    temperature: float,
    top_p: float,
    n: int,
    timeout: float,
    as_json: bool,
    cluster_key_file: str | None,
    tls_ca: str | None,
) -> None:
    """Stream one node's answer to QUESTION (no coordination, no voting)."""
    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="QUESTION")
    if n > 1 and temperature == 0:
        raise click.BadParameter(
            f"{n} samples need --temperature above 0 (greedy decoding gives one answer)", param_hint="'-n'"
        )
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n, logprobs=as_json)
    security = _security(cluster_key_file, tls_ca)
    sys.exit(_run_interruptible(lambda: _generate(peer, question, params, timeout, as_json, security)))


async def _generate(
    peer: str, question: str, params: SamplingParams, timeout_s: float, as_json: bool, security: dict[str, Any]
) -> int:
    try:
        async with await PeerClient.connect(peer, timeout_s=min(timeout_s, 10.0), **security) as client:
            messages = [{"role": "user", "content": question}]
            if as_json:
                result = await client.complete(messages=messages, params=params, timeout_s=timeout_s)
                out.print_json(
                    json.dumps(
                        {
                            "node": client.remote.model_dump(mode="json"),  # public key as hex
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
        err.print(f"dellm: error: {exc}", markup=False)
        return 1


@main.command()
@_peer_option
@_security_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(peer: str, as_json: bool, cluster_key_file: str | None, tls_ca: str | None) -> None:
    """Show a node's counters."""
    sys.exit(run(_stats(peer, as_json, _security(cluster_key_file, tls_ca))))


async def _stats(peer: str, as_json: bool, security: dict[str, Any]) -> int:
    try:
        async with await PeerClient.connect(peer, **security) as client:
            rtt = await client.ping()
            result = await client.stats()
    except PeerError as exc:
        err.print(f"dellm: error: {exc}", markup=False)
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


@main.command()
@click.argument("question", required=False)
@click.option(
    "--file",
    "question_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the question from this file ('-': stdin) instead of QUESTION.",
)
@click.option(
    "--peer", "peers", multiple=True, metavar="URL", callback=peer_url,
    help="Bootstrap node ws://host:port (repeatable).",
)  # fmt: skip
@click.option("--mdns-interface", "interfaces", multiple=True, metavar="IP", help="IPv4 address to browse mDNS on.")
@click.option("--no-mdns", is_flag=True, help="Do not browse mDNS (use --peer).")
@_answer_options
@click.option("--discover-timeout", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full trace as JSON.")
@_security_options
def ask(
    question: str | None,
    question_file: str | None,
    peers,
    interfaces,
    no_mdns: bool,
    as_json: bool,
    discover_timeout: float,
    **opts,
) -> None:
    """Ask the network QUESTION: decompose, route, vote, synthesize.

    QUESTION "-" (or --file -) reads the question from stdin, --file PATH
    from a file: for questions too long for the command line (the limit
    is 10,000 characters). Ctrl-C stops the question and exits with 130.
    """
    from ..coordinator.pipeline import check_question
    from ..swarm import SwarmError

    options, security = _options_and_security(opts)
    question = _read_question(question, question_file)
    try:
        check_question(question, options.max_question_chars)
    except SwarmError as exc:
        _exit_usage(str(exc))

    async def respond(swarm) -> int:
        if as_json:
            answer = await swarm.ask(question)
            out.print_json(json.dumps(answer.to_dict(), default=str))
        else:
            await show_progress(swarm, question, out, err)
        return 0

    swarm_args = dict(peers=peers, mdns=not no_mdns, mdns_interfaces=list(interfaces) or None)
    sys.exit(_run_interruptible(lambda: _in_swarm(respond, options, discover_timeout, security, **swarm_args)))


@main.command()
@click.option(
    "--peer", "peers", multiple=True, metavar="URL", callback=peer_url,
    help="Bootstrap node ws://host:port (repeatable).",
)  # fmt: skip
@click.option("--mdns-interface", "interfaces", multiple=True, metavar="IP", help="IPv4 address to browse mDNS on.")
@click.option("--no-mdns", is_flag=True, help="Do not browse mDNS (use --peer).")
@click.option("--system", metavar="TEXT", help="A system message that starts the conversation.")
@_answer_options
@click.option("--discover-timeout", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True)
@_security_options
def chat(peers, interfaces, no_mdns: bool, system: str | None, discover_timeout: float, **opts) -> None:
    """Talk with the network: each line is asked with the conversation so far.

    Answers stream with the same progress as `dellm ask`. /reset forgets the
    conversation, /exit or Ctrl-D quits, Ctrl-C cancels the answer being
    written (at the prompt it quits).
    """
    from .chat import repl

    options, security = _options_and_security(opts)

    async def talk(swarm) -> int:
        return await repl(swarm, out, err, system=system)

    swarm_args = dict(peers=peers, mdns=not no_mdns, mdns_interfaces=list(interfaces) or None)
    try:
        code = run(_in_swarm(talk, options, discover_timeout, security, **swarm_args))
    except KeyboardInterrupt:  # while joining, before the REPL took over Ctrl-C
        code = 130
    sys.exit(code)


def _exit_usage(message: str) -> NoReturn:
    """One line on stderr, exit code 2 (a usage error)."""
    err.print(f"dellm: error: {message}", markup=False)
    sys.exit(2)


def _read_question(question: str | None, path: str | None) -> str:
    """The question from the argument, stdin (``-``) or a file; exits 2 with one line when missing or unreadable."""
    if question is not None and path is not None:
        _exit_usage("give the question as QUESTION or with --file, not both")
    if question is None and path is None:
        _exit_usage("missing the question: QUESTION, '-' for stdin, or --file PATH")
    if question is not None and question != "-":
        return question
    source = "-" if question == "-" else path
    assert source is not None
    try:
        if source == "-":
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        _exit_usage(f"cannot read the question from {source}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        _exit_usage(f"the question in {'stdin' if source == '-' else source} is not UTF-8 text")


def _run_interruptible(work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``work()`` on the event loop; Ctrl-C cancels it and the exit code is 130 (128 + SIGINT), as shells expect.

    Click would turn a KeyboardInterrupt into "Aborted!" and exit 1, and a
    task that catches its cancellation could return another code: the
    SIGINT handler notes the interruption, so the code is 130 either way.
    """
    interrupted = False

    async def guarded() -> int:
        nonlocal interrupted
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return await work()
        except asyncio.CancelledError:
            if interrupted:
                return 130
            raise
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        code = run(guarded())
    except KeyboardInterrupt:  # before the handler was installed, or after it was removed
        interrupted = True
    if interrupted:
        err.print("dellm: interrupted", markup=False)
        return 130
    return code


@main.command()
@click.option("--peer", metavar="URL", callback=peer_url, help="Ask this node (default: the first node found by mDNS).")
@click.option("--mdns-interface", "interfaces", multiple=True, metavar="IP", help="IPv4 address to browse mDNS on.")
@click.option("--discover-timeout", type=click.FloatRange(0, min_open=True), default=3.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--all", "show_all", is_flag=True, help="Also list coordinators (dellm ask, Swarm) that are gone.")
@_security_options
def peers(
    peer: str | None,
    interfaces: tuple[str, ...],
    discover_timeout: float,
    as_json: bool,
    watch: bool,
    show_all: bool,
    cluster_key_file: str | None,
    tls_ca: str | None,
) -> None:
    """Show the network as one node sees it: peers, RTT, fitness, state.

    Coordinator-only members (a `dellm ask` or a Swarm: no URL, no model)
    that have left or died are hidden unless --all; nodes forget them a
    minute after they go.
    """
    security = _security(cluster_key_file, tls_ca)
    try:
        sys.exit(run(_peers(peer, list(interfaces) or None, discover_timeout, as_json, watch, security, show_all)))
    except KeyboardInterrupt:
        sys.exit(130)


async def _peers(
    peer: str | None,
    interfaces: list[str] | None,
    discover_s: float,
    as_json: bool,
    watch: bool,
    security: dict[str, Any],
    show_all: bool = False,
) -> int:
    try:
        url = peer or await _discover_one(interfaces, discover_s)
        async with await PeerClient.connect(url, **security) as client:
            if not watch:
                all_rows, models = await _peer_rows(client)
                rows, hidden = _visible(all_rows, show_all)
                out.print_json(json.dumps(rows)) if as_json else out.print(_peer_view(rows, url, hidden, models))
                return 0
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    all_rows, models = await _peer_rows(client)
                    rows, hidden = _visible(all_rows, show_all)
                    live.update(_peer_view(rows, url, hidden, models), refresh=True)
                    await asyncio.sleep(1.0)
    except PeerError as exc:
        err.print(f"dellm: error: {exc}", markup=False)
        return 1


async def _discover_one(interfaces: list[str] | None, timeout_s: float) -> str:
    found = await browse(interfaces, timeout_s)
    if not found:
        where = ", ".join(interfaces) if interfaces else "all interfaces"
        raise PeerError("no_peers", f"no dellm node answered on mDNS ({where}) within {timeout_s:g} s; try --peer URL")
    return found[0].url


async def _peer_rows(client: PeerClient) -> tuple[list[dict], list[ModelFitness]]:
    """The node's peer table as JSON-ready rows (itself first), and its per-(model, kind) counts."""
    remote = client.remote
    table = await client.peers()
    me = PeerRow(node_id=remote.node_id, url=client.url, name=remote.name, model=remote.model,
                 capacity=remote.capacity, fitness=table.fitness, state="self", source="self")  # fmt: skip
    return [row.model_dump() for row in [me, *table.peers]], table.models


def _peer_view(rows: list[dict], url: str, hidden: int, models: list[ModelFitness]) -> Group:
    """The peer table, then what the network learned per model and chunk kind (when anything)."""
    learned = model_fitness_table(models)
    return Group(_peer_table(rows, url, hidden), *([learned] if learned is not None else []))


def _visible(rows: list[dict], show_all: bool) -> tuple[list[dict], int]:
    """Rows to show and how many were hidden: departed coordinator-only members are, unless ``show_all``.

    Every `dellm ask` joins as a coordinator with a fresh id and leaves when
    it is done; until the node forgets them they would fill the table.
    """
    if show_all:
        return rows, 0
    shown = [r for r in rows if r["url"] or r["state"] not in ("left", "dead")]
    return shown, len(rows) - len(shown)


def _peer_table(rows: list[dict], url: str, hidden: int = 0) -> Table:
    alive = sum(r["state"] in ("alive", "self") for r in rows)
    title = f"dellm network seen from {url}: {alive} alive of {len(rows)}"
    if hidden:
        title += f" ({hidden} departed coordinator(s) hidden; --all shows them)"
    table = Table(title=title)
    for column in ("name", "node id", "url", "model", "cap", "in-flight", "rtt ms", "fitness", "seen s ago", "state"):
        table.add_column(column, justify="right" if column in ("cap", "in-flight", "rtt ms", "fitness") else "left")
    colors = {"alive": "green", "self": "bold green", "suspect": "yellow", "dead": "red", "left": "dim"}
    for r in rows:
        rtt = f"{r['rtt_ms']:.2f}" if r["rtt_ms"] is not None else "-"
        state = f"[{colors.get(r['state'], 'white')}]{r['state']}[/]"
        table.add_row(r["name"], r["node_id"], r["url"] or "(coordinator)", r["model"] or "(none)", str(r["capacity"]),
                      str(r["in_flight"]), rtt, f"{r['fitness']:.3f}", f"{r['last_seen_s']:.1f}", state)  # fmt: skip
    return table


main.add_command(up)
main.add_command(down)
main.add_command(learn)


if __name__ == "__main__":
    main()
