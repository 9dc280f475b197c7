"""The environment a node gives vLLM's engine processes (issue 16: oneDNN's primitive cache off on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dellm_p2p import node as node_module
from dellm_p2p.cli import node as cli_node
from dellm_p2p.config import NodeConfig
from dellm_p2p.engine.vllm_engine import CPU_ENGINE_ENV, VllmEngine, engine_environment, environment

KEY = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def test_cpu_defaults_turn_the_onednn_cache_off(monkeypatch):
    monkeypatch.delenv(KEY, raising=False)
    assert CPU_ENGINE_ENV[KEY] == "0"
    assert engine_environment(cpu=True) == {KEY: "0"}
    assert engine_environment(cpu=False) == {}  # a GPU box keeps vLLM's own settings


def test_the_operator_environment_wins_over_a_default(monkeypatch):
    monkeypatch.setenv(KEY, "512")
    assert KEY not in engine_environment(cpu=True)  # inherited as 512, not overwritten


def test_engine_env_setting_wins_over_everything(monkeypatch):
    monkeypatch.setenv(KEY, "512")
    env = engine_environment({KEY: "64", "LD_PRELOAD": "/lib/libtcmalloc_minimal.so.4"}, cpu=True)
    assert env == {KEY: "64", "LD_PRELOAD": "/lib/libtcmalloc_minimal.so.4"}


def test_environment_reaches_spawned_processes_and_is_restored(monkeypatch):
    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.setenv("DELLM_TEST_KEPT", "before")
    probe = [sys.executable, "-c", f"import os; print(os.environ.get({KEY!r}), os.environ['DELLM_TEST_KEPT'])"]
    with environment({KEY: "0", "DELLM_TEST_KEPT": "during"}):
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.split()
    assert inside == ["0", "during"]
    assert KEY not in os.environ and os.environ["DELLM_TEST_KEPT"] == "before"


def test_environment_is_restored_after_an_error(monkeypatch):
    monkeypatch.delenv(KEY, raising=False)
    with pytest.raises(RuntimeError), environment({KEY: "0"}):
        raise RuntimeError("engine failed to load")
    assert KEY not in os.environ


def test_node_config_passes_engine_env_to_the_engine(monkeypatch, tmp_path):
    monkeypatch.setattr(node_module, "_vllm_on_cpu", lambda: True)
    monkeypatch.setenv("DELLM_ENGINE_ENV", '{"MALLOC_ARENA_MAX": "2"}')
    config = NodeConfig(name="env-test", state_dir=tmp_path)
    assert config.engine_env == {"MALLOC_ARENA_MAX": "2"}
    monkeypatch.setattr("dellm_p2p.models.resolve_model", lambda model: type("R", (), {"path": "m", "name": "m"})())
    monkeypatch.setattr("dellm_p2p.models.default_model_ready", lambda: True)
    engine = node_module.build_engine(config, lambda message: None)
    assert isinstance(engine, VllmEngine)
    assert engine._engine_env == {"MALLOC_ARENA_MAX": "2"} and engine._cpu is True


def test_node_caps_its_malloc_arenas(monkeypatch):
    from dellm_p2p import runtime

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert runtime.limit_malloc_arenas() is True  # glibc on Linux: mallopt accepted
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert runtime.limit_malloc_arenas() is False  # the operator's setting stands


def test_dellm_node_caps_arenas_before_anything_else(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_node, "limit_malloc_arenas", lambda: calls.append("arenas"))
    monkeypatch.setattr(cli_node, "setup_logging", lambda verbose: calls.append("logging"))
    monkeypatch.setattr(cli_node, "load_config", lambda *a, **k: (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        cli_node.main.callback(
            config_path=None, no_model=True, no_mdns=True, verbose=0, peers=(), mdns_interfaces=(), openai_url=None
        )
    assert calls[:2] == ["arenas", "logging"]
