"""Conversations: history trimming, Swarm.chat and ``dellm chat``, against a SIMULATED engine (fast)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from dellm_p2p.coordinator.errors import QuestionError
from dellm_p2p.coordinator.history import (
    CHARS_PER_TOKEN,
    estimate_tokens,
    fit_history,
    split_conversation,
    with_history,
)
from dellm_p2p.swarm import Swarm

from .simulated_engine import SimulatedEngine
from .test_http_api import REPLIES, start_node


def turn(role: str, words: int, tag: str) -> dict[str, str]:
    return {"role": role, "content": f"{tag} " + " ".join(["blah"] * words)}


def test_split_takes_the_last_user_message():
    question, history = split_conversation(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A?"},
         {"role": "assistant", "content": "a"}, {"role": "user", "content": "B?"}]
    )  # fmt: skip
    assert question == "B?" and [m["content"] for m in history] == ["Be brief.", "A?", "a"]
    with pytest.raises(QuestionError, match="no user message"):
        split_conversation([{"role": "assistant", "content": "hi"}])
    with pytest.raises(QuestionError, match="role"):
        split_conversation([{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}])


def test_history_is_trimmed_oldest_first_and_keeps_the_system_message():
    history = [{"role": "system", "content": "You are terse."}] + [
        turn("user" if i % 2 == 0 else "assistant", 30, f"t{i}") for i in range(20)
    ]
    one = estimate_tokens([history[-1]])
    kept = fit_history(history, estimate_tokens(history[:1]) + 5 * one)
    assert kept[0]["role"] == "system" and [m["content"][:3] for m in kept[1:]] == ["t15", "t16", "t17", "t18", "t19"]
    tail = [{"role": "system", "content": "Combine."}, {"role": "user", "content": "Question: x"}]
    messages = with_history(history, tail, context_tokens=estimate_tokens(history) + 1000, max_tokens=100)
    # One leading system message (the tail's, then the conversation's), all turns, the tail's user message last.
    assert messages[0] == {"role": "system", "content": "Combine.\n\nYou are terse."}
    assert [m["role"] for m in messages[1:]] == [m["role"] for m in history[1:]] + ["user"]
    small = with_history(history, tail, context_tokens=400, max_tokens=100)
    assert estimate_tokens(small) <= 400 - 100 and small[-2]["content"].startswith("t19")
    assert with_history([], tail, context_tokens=10, max_tokens=5) == tail
    assert CHARS_PER_TOKEN <= 4  # conservative: over-counts English tokens


async def test_swarm_chat_carries_the_conversation_and_trims_it_to_the_context_window(tmp_path, monkeypatch):
    engine = SimulatedEngine(token_interval_s=0.001, max_model_len=1500)
    engine.replies = {"river": REPLIES["river"]} | REPLIES  # the first key found in the prompt wins
    node = await start_node(tmp_path, monkeypatch, engine, http_port=None)
    try:
        async with Swarm(peers=[node.url], mdns=False) as swarm:
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            first = await swarm.chat(messages)
            engine.prompts.clear()
            messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Which river?"}]
            second = await swarm.chat(messages, redundancy=1)
            assert second.text == REPLIES["river"] and second.usage["completion_tokens"] > 0
            assert all("capital of France" in p and first.text in p for p in engine.prompts)
            # A long conversation is trimmed oldest first to the peer's window (1500 tokens in its hello).
            long = [turn("user" if i % 2 == 0 else "assistant", 150, f"old{i}") for i in range(40)]
            engine.prompts.clear()
            await swarm.chat([*long, {"role": "user", "content": "Which river?"}], redundancy=1)
            (prompt,) = engine.prompts
            assert "old39" in prompt and "old0 " not in prompt and len(prompt.split()) < 1500
    finally:
        await node.close(0)


async def test_dellm_chat_repl_keeps_the_history_and_resets(tmp_path, monkeypatch):
    engine = SimulatedEngine(token_interval_s=0.001, max_model_len=4096)
    engine.replies = {"river": REPLIES["river"]} | REPLIES  # the first key found in the prompt wins
    node = await start_node(tmp_path, monkeypatch, engine, http_port=None)
    try:
        lines = "What is the capital of France?\n/nonsense\nWhich river runs there?\n/reset\nWhich river?\n/exit\n"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dellm_p2p.cli.main", "chat", "--peer", node.url, "--no-mdns", "-k", "1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate(lines.encode())
        assert proc.returncode == 0, stderr.decode()
        out, err = stdout.decode(), stderr.decode()
        assert out.count(REPLIES["capital"]) == 1 and out.count(REPLIES["river"]) == 2
        assert "unknown command /nonsense" in err and "conversation reset" in err
        questions = [p for p in engine.prompts if "Which river" in p]
        assert len(questions) == 2
        assert "capital of France" in questions[0]  # the second turn carried the first
        assert "capital of France" not in questions[1]  # after /reset it did not
    finally:
        await node.close(0)


async def test_dellm_chat_on_a_terminal_cancels_with_ctrl_c_and_quits_with_ctrl_d(tmp_path, monkeypatch):
    import pty
    import signal

    engine = SimulatedEngine(" ".join(f"w{i}" for i in range(2000)), token_interval_s=0.01, max_model_len=4096)
    engine.replies = {"capital": REPLIES["capital"]}
    node = await start_node(tmp_path, monkeypatch, engine, http_port=None)
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dellm_p2p.cli.main", "chat", "--peer", node.url, "--no-mdns", "-k", "1",
            stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "120", "TERM": "dumb"},
        )  # fmt: skip
        os.close(slave)
        seen = bytearray()

        async def until(text: str) -> None:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(30):
                while text.encode() not in seen:
                    seen.extend(await loop.run_in_executor(None, os.read, master, 4096))

        await until("you> ")
        os.write(master, b"Tell me a long story\n")
        async with asyncio.timeout(20):  # the peer is generating
            while not engine.running:
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        await until("answer cancelled")
        async with asyncio.timeout(10):  # and the peer aborted it
            while engine.running:
                await asyncio.sleep(0.02)
        assert engine.aborted
        os.write(master, b"What is the capital of France?\n")
        await until(REPLIES["capital"])
        os.write(master, b"\x04")  # Ctrl-D at the prompt
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        os.close(master)
        await node.close(0)
