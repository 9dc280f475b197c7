"""Chat memory (issue 24): earlier turns reach classification and every chunk, and ``dellm chat`` separates turns.

The swarm runs against a SIMULATED engine (replies chosen by what the prompt contains).
"""

from __future__ import annotations

import asyncio
import os
import sys

from dellm_p2p.coordinator.decompose import chunk_prompt, classify, decompose, with_conversation
from dellm_p2p.coordinator.types import Operation
from dellm_p2p.swarm import Swarm

from .simulated_engine import SimulatedEngine
from .test_http_api import start_node

ALICE = [
    {"role": "user", "content": "My name is Alice and my favourite number is 7."},
    {"role": "assistant", "content": "Nice to meet you!"},
]
QUESTION = "What is my name, and what is my favourite number plus 3?"


def test_a_number_after_plus_makes_a_chunk_math():
    assert classify("what is my favourite number plus 3?") is Operation.MATH
    assert classify("what is my age minus 4") is Operation.MATH
    assert classify("Tell me the capital of France, plus one fun fact") is Operation.LOOKUP


def test_chunks_that_refer_to_the_conversation_quote_what_the_user_said():
    name, number = with_conversation(decompose(QUESTION), ALICE)
    assert number.operation is Operation.MATH
    for chunk in (name, number):
        assert "favourite number is 7" in chunk_prompt(chunk, {}, program_aided=True)
    (unrelated,) = with_conversation(decompose("What is the capital of France?"), ALICE)
    assert unrelated.context == ""
    # A chunk that refers back also sees the previous answer; without history nothing changes.
    (back,) = with_conversation(decompose("Multiply that by 2"), [*ALICE[:1], {"role": "assistant", "content": "10"}])
    assert "Your previous answer: 10" in back.context
    assert with_conversation(decompose(QUESTION), []) == decompose(QUESTION)


async def test_the_swarm_uses_the_conversation_in_every_chunk(tmp_path, monkeypatch):
    engine = SimulatedEngine(token_interval_s=0.001, max_model_len=4096)
    # The simulated model can only answer from what its user message says (first key found wins).
    engine.replies = {"plus 3": "7 + 3", "name": "Your name is Alice."}
    node = await start_node(tmp_path, monkeypatch, engine, http_port=None)
    try:
        async with Swarm(peers=[node.url], mdns=False) as swarm:
            answer = await swarm.ask(QUESTION, history=ALICE, redundancy=1, synthesize=False)
        _, number = answer.chunks
        assert number.chunk.operation is Operation.MATH and number.vote.answer == "10"
        assert "Alice" in answer.text and "10" in answer.text
        asked = [p for p in engine.prompts if "plus 3" in p or "What is my name" in p]
        assert len(asked) == 2 and all("favourite number is 7" in p for p in asked)
        # The quote replaces the earlier chat turns (they derailed the default model): no reply of theirs is sent.
        assert not any("Nice to meet you" in p for p in asked)
    finally:
        await node.close(0)


async def test_dellm_chat_separates_turns_on_stdout(tmp_path, monkeypatch):
    engine = SimulatedEngine(token_interval_s=0.001, max_model_len=4096)
    engine.replies = {"What is my name": "Your name is Alice.", "Alice": "Nice to meet you."}
    node = await start_node(tmp_path, monkeypatch, engine, http_port=None)
    try:
        lines = "My name is Alice.\nWhat is my name?\n"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dellm_p2p.cli.main", "chat", "--peer", node.url, "--no-mdns", "-k", "1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate(lines.encode())
        assert proc.returncode == 0, stderr.decode()
        assert stdout.decode() == (
            "you> My name is Alice.\nNice to meet you.\n\nyou> What is my name?\nYour name is Alice.\n\n"
        ), stdout.decode()
    finally:
        await node.close(0)
