"""Core claims: nodes on one machine spread over the cores; claims are released on exit, stale ones ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dellm_p2p.cores import CoreClaimError, claim_cores, cpu_list, parse_cpu_list, runtime_dir


def test_cpu_list_formats_and_parses_ranges():
    assert cpu_list([0]) == "0"
    assert cpu_list([3, 0, 1, 2, 5]) == "0-3,5"
    assert cpu_list([1, 3]) == "1,3"
    assert parse_cpu_list("0-3,5") == [0, 1, 2, 3, 5] and parse_cpu_list("1") == [1]
    for other in ("auto", "nobind", "", "3-1", "-1", "0-2|3-5"):
        assert parse_cpu_list(other) is None, other


def test_claims_spread_over_cores_then_share(tmp_path):
    a = claim_cores(directory=tmp_path, available=[0, 1])
    b = claim_cores(directory=tmp_path, available=[0, 1])
    c = claim_cores(directory=tmp_path, available=[0, 1])
    assert (a.spec, b.spec, c.spec) == ("0", "1", "0")
    assert c.slots == [1]  # core 0 shared only once both cores have a node
    a.release()
    assert not (tmp_path / "core-0.0").exists()
    d = claim_cores(directory=tmp_path, available=[0, 1])
    assert (d.spec, d.slots) == ("0", [0])  # the released slot is the least shared again
    for claim in (b, c, d):
        claim.release()
    assert list(tmp_path.iterdir()) == []


def test_several_cores_per_claim(tmp_path):
    with claim_cores(2, directory=tmp_path, available=[0, 1, 2, 3]) as first:
        second = claim_cores(2, directory=tmp_path, available=[0, 1, 2, 3])
        assert (first.spec, second.spec) == ("0-1", "2-3")
        second.release()
    assert claim_cores(9, directory=tmp_path, available=[4, 5]).spec == "4-5"  # capped at what exists


def test_claim_of_a_killed_process_is_ignored(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from dellm_p2p.cores import claim_cores
            claim = claim_cores(directory=Path({str(tmp_path)!r}), available=[0, 1])
            print(claim.spec, flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "0"
        assert (tmp_path / "core-0.0").read_text().strip() == str(holder.pid)
        with claim_cores(directory=tmp_path, available=[0, 1]) as live:
            assert live.spec == "1"  # core 0 is held by a live process
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "core-0.0").exists()  # a killed node leaves its file behind ...
    with claim_cores(directory=tmp_path, available=[0, 1]) as after:
        assert (after.spec, after.slots) == ("0", [0])  # ... but not its claim
        assert (tmp_path / "core-0.0").read_text().strip() == str(os.getpid())


def test_unusable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CoreClaimError, match="cannot claim CPU cores"):
        claim_cores(directory=blocker / "cores")


def test_runtime_dir_prefers_xdg_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == tmp_path / "dellm"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime_dir().name == f"dellm-{os.getuid()}"


def test_node_claims_a_core_only_for_a_cpu_vllm_engine_without_cpu_bind(tmp_path, monkeypatch):
    from dellm_p2p import node
    from dellm_p2p.config import load_config

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(node, "_vllm_on_cpu", lambda: True)
    claim = node.claim_cpu_cores(load_config(cpu_cores=1))
    assert claim is not None and (tmp_path / "dellm" / "cores" / f"core-{claim.cores[0]}.0").exists()
    claim.release()
    explicit = node.claim_cpu_cores(load_config(cpu_bind="0"))  # an explicit core is claimed too ...
    assert explicit is not None and explicit.spec == "0"
    with claim_cores(directory=tmp_path / "dellm" / "cores", available=[0, 1]) as auto:
        assert auto.spec == "1"  # ... so a node that picks its own avoids it
    explicit.release()
    assert node.claim_cpu_cores(load_config(cpu_bind="auto")) is None
    assert node.claim_cpu_cores(load_config(engine="none")) is None
    monkeypatch.setattr(node, "_vllm_on_cpu", lambda: False)
    assert node.claim_cpu_cores(load_config()) is None  # a GPU box: vLLM's CPU binding does not apply
