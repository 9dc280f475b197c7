"""``dellm ask`` as a user meets it: the question from stdin or a file, one-line errors, Ctrl-C, piped progress.

The nodes are in-process simulated ones (see ``test_swarm.py``); ``dellm``
runs as a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from .simulated_engine import SimulatedEngine
from .test_swarm import QUESTION, REPLIES, SimNode

DELLM = [sys.executable, "-m", "dellm_p2p.cli.main"]


@pytest.fixture
async def bootstrap():
    nodes = []
    for name in ("ask-a", "ask-b"):
        engine = SimulatedEngine(token_interval_s=0.002)
        engine.replies = dict(REPLIES)
        nodes.append(SimNode(name, engine))
    first = await nodes[0].start([])
    await nodes[1].start([first])
    async with asyncio.timeout(5):
        while not all(len(n.membership.table.alive()) == 1 for n in nodes):
            await asyncio.sleep(0.05)
    yield first
    for node in nodes:
        await node.close()


async def dellm(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``dellm`` without blocking the loop the simulated nodes run on."""
    proc = await asyncio.create_subprocess_exec(
        *DELLM, *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode, out.decode(), err.decode()


async def test_question_from_stdin_and_from_a_file(bootstrap, tmp_path):
    common = ("--peer", bootstrap, "--no-mdns", "--json", "-k", "2")
    code, out, err = await dellm("ask", "-", *common, stdin=QUESTION + "\n")
    assert code == 0, err
    assert json.loads(out)["question"] == QUESTION
    question_file = tmp_path / "question.txt"
    question_file.write_text("What is 10% of 1000?\n")
    code, out, err = await dellm("ask", "--file", str(question_file), *common)
    assert code == 0, err
    assert json.loads(out)["question"] == "What is 10% of 1000?"


async def test_question_problems_are_one_line_with_exit_2(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * 200_000)
    cases = [
        (("ask", "--file", str(big), "--no-mdns"), None, "the question is 200,000 characters; the limit is 10,000"),
        (("ask", "-", "--no-mdns"), "x" * 10_001, "the limit is 10,000"),
        (("ask", "-", "--no-mdns"), "   \n", "the question is empty"),
        (("ask", "--no-mdns"), None, "missing the question"),
        (("ask", "q", "--file", str(big)), None, "not both"),
        (("ask", "--file", str(tmp_path / "missing.txt")), None, "cannot read the question"),
    ]
    for args, stdin, message in cases:
        code, out, err = await dellm(*args, stdin=stdin)
        assert code == 2, (args, err)
        assert err.startswith("dellm: error: ") and message in err and err.count("\n") == 1, (args, err)
        assert out == ""


def test_ctrl_c_exits_130():
    with socket.socket() as listener:  # a "peer" that accepts and says nothing: dellm is then inside its event loop
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(60)
        peer = f"ws://127.0.0.1:{listener.getsockname()[1]}"
        proc = subprocess.Popen(
            [*DELLM, "ask", "What is 2+2?", "--no-mdns", "--peer", peer, "--discover-timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = listener.accept()
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "dellm: interrupted"
    assert "Traceback" not in err and "Aborted" not in err


async def test_piped_progress_is_one_status_per_line(bootstrap):
    code, out, err = await dellm("ask", QUESTION, "--peer", bootstrap, "--no-mdns", "-k", "2")
    assert code == 0, err
    lines = err.splitlines()
    assert "synthesizing…" in lines  # a line of its own, not glued to a table border
    assert any(line.startswith("c1 ") for line in lines), err
    assert any(": voted " in line for line in lines), err
    assert not any(ch in err for ch in "┏┃┗└┘│"), err  # no live table when stderr is not a terminal
    assert out.strip()
