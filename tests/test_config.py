"""Node configuration: example files, precedence of the sources, and one-line errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dellm_p2p.config import ConfigError, NodeConfig, load_config
from dellm_p2p.protocol import DEFAULT_MAX_FRAME_BYTES

NODES_DIR = Path(__file__).resolve().parent.parent / "nodes"
NODE_FILES = sorted(NODES_DIR.glob("*.toml"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Keep the developer's DELLM_* variables and state directory out of the tests."""
    for key in list(os.environ):
        if key.upper().startswith("DELLM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(*args, **kwargs) -> ConfigError:
    """Call ``load_config`` expecting a ConfigError whose message is one readable line."""
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert message and message == message.strip()
    assert "\n" not in message and "\r" not in message
    return info.value


# --------------------------------------------------------------------------- example files


def test_there_are_example_node_files():
    assert {p.name for p in NODE_FILES} >= {"laptop.toml", "gpu-server.toml"}


@pytest.mark.parametrize("path", NODE_FILES, ids=[p.stem for p in NODE_FILES])
def test_every_node_file_loads(path):
    config = load_config(path)
    assert isinstance(config, NodeConfig)
    assert config.name == path.stem
    # ``str`` paths work too.
    assert load_config(str(path)) == config


def test_laptop_values():
    config = load_config(NODES_DIR / "laptop.toml")
    assert (config.name, config.host, config.port, config.engine) == ("laptop", "127.0.0.1", 7070, "vllm")
    assert config.model is None
    assert config.max_model_len == 2048
    assert config.kv_cache_gib == 1.0
    assert config.max_concurrency == 16
    assert config.grace_period_s == 10.0


def test_gpu_server_values():
    config = load_config(NODES_DIR / "gpu-server.toml")
    assert (config.name, config.host, config.engine) == ("gpu-server", "0.0.0.0", "openai")
    assert config.openai_base_url == "http://127.0.0.1:8000/v1"
    assert config.openai_model is None
    assert config.max_concurrency == 64


def test_defaults_without_file():
    config = load_config(name="solo")
    assert config.host == "127.0.0.1"
    assert config.port == 7070
    assert config.engine == "vllm"
    assert config.max_model_len == 2048
    assert config.max_concurrency == 32
    assert config.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    assert config.vllm_args == {}
    assert config.state_dir is None


def test_name_defaults_to_host_name():
    assert load_config().name == socket.gethostname()


def test_top_level_keys_without_node_table(tmp_path):
    path = write(tmp_path, 'name = "flat"\nport = 7171\n')
    config = load_config(path)
    assert (config.name, config.port) == ("flat", 7171)


def test_nested_vllm_args(tmp_path):
    path = write(tmp_path, '[node]\nname = "gpu"\n[node.vllm_args]\ntensor_parallel_size = 2\n')
    assert load_config(path).vllm_args == {"tensor_parallel_size": 2}


# --------------------------------------------------------------------------- precedence


def test_overrides_beat_the_file():
    config = load_config(NODES_DIR / "laptop.toml", port=9001, name="other", max_concurrency=2, host="0.0.0.0")
    assert (config.port, config.name, config.max_concurrency, config.host) == (9001, "other", 2, "0.0.0.0")
    # Keys the overrides leave alone still come from the file.
    assert config.grace_period_s == 10.0
    assert config.engine == "vllm"


def test_override_can_switch_engine():
    config = load_config(NODES_DIR / "laptop.toml", engine="openai", openai_base_url="http://h:1/v1")
    assert (config.engine, config.openai_base_url) == ("openai", "http://h:1/v1")


def test_none_overrides_do_not_mask_the_file():
    # What click passes for flags that were not given.
    config = load_config(
        NODES_DIR / "gpu-server.toml",
        port=None,
        name=None,
        host=None,
        engine=None,
        openai_base_url=None,
        max_concurrency=None,
        state_dir=None,
    )
    assert config == load_config(NODES_DIR / "gpu-server.toml")
    assert (config.name, config.engine, config.max_concurrency) == ("gpu-server", "openai", 64)


def test_falsy_overrides_are_kept():
    config = load_config(NODES_DIR / "laptop.toml", port=0, grace_period_s=0.0)
    assert (config.port, config.grace_period_s) == (0, 0.0)


def test_env_var_is_honoured(monkeypatch):
    monkeypatch.setenv("DELLM_PORT", "7171")
    monkeypatch.setenv("DELLM_MAX_CONCURRENCY", "5")
    config = load_config(name="n")
    assert (config.port, config.max_concurrency) == (7171, 5)


def test_explicit_override_beats_env(monkeypatch):
    monkeypatch.setenv("DELLM_PORT", "7171")
    assert load_config(name="n", port=9002).port == 9002
    assert load_config(NODES_DIR / "laptop.toml", port=9002).port == 9002


def test_none_override_does_not_mask_env(monkeypatch):
    monkeypatch.setenv("DELLM_PORT", "7171")
    assert load_config(name="n", port=None).port == 7171


def test_env_var_beats_the_file(monkeypatch):
    monkeypatch.setenv("DELLM_PORT", "7171")
    assert load_config(NODES_DIR / "laptop.toml").port == 7171


def test_bad_env_value_is_a_config_error(monkeypatch):
    monkeypatch.setenv("DELLM_PORT", "not-a-port")
    assert "port" in str(config_error(name="n"))


def test_openai_url_from_env_satisfies_the_cross_check(monkeypatch):
    monkeypatch.setenv("DELLM_OPENAI_BASE_URL", "http://h:8000/v1")
    assert load_config(name="n", engine="openai").openai_base_url == "http://h:8000/v1"


# --------------------------------------------------------------------------- errors


def test_node_must_be_a_table(tmp_path):
    assert "table" in str(config_error(write(tmp_path, 'node = "laptop"\n')))


def test_keys_outside_the_node_table_are_refused(tmp_path):
    assert "prot" in str(config_error(write(tmp_path, 'prot = 1\n[node]\nname = "n"\n')))


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, '[node]\nname = "n"\nmax_conncurrency = 4\n')
    assert "max_conncurrency" in str(config_error(path))


def test_unknown_override():
    assert "colour" in str(config_error(name="n", colour="blue"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        pytest.param({"port": 70000}, "port", id="port-70000"),
        pytest.param({"port": -1}, "port", id="port-negative"),
        pytest.param({"max_concurrency": 0}, "max_concurrency", id="max_concurrency-0"),
        pytest.param({"max_concurrency": 5000}, "max_concurrency", id="max_concurrency-5000"),
        pytest.param({"name": "my node"}, "name", id="name-with-space"),
        pytest.param({"name": "a/b"}, "name", id="name-with-slash"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": "x" * 65}, "name", id="name-too-long"),
        pytest.param({"engine": "llamacpp"}, "engine", id="engine-unknown"),
        pytest.param({"max_model_len": 8}, "max_model_len", id="max_model_len-8"),
        pytest.param({"kv_cache_gib": 0}, "kv_cache_gib", id="kv_cache_gib-0"),
        pytest.param({"max_frame_bytes": 100}, "max_frame_bytes", id="max_frame_bytes-100"),
        pytest.param({"request_timeout_s": 0}, "request_timeout_s", id="request_timeout_s-0"),
        pytest.param({"grace_period_s": -1}, "grace_period_s", id="grace_period_s-neg"),
        pytest.param({"port": "abc"}, "port", id="port-string"),
    ],
)
def test_bad_value_override(overrides, key):
    overrides.setdefault("name", "n")
    assert key in str(config_error(**overrides))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("port = 70000", "port", id="port-70000"),
        pytest.param("max_concurrency = 0", "max_concurrency", id="max_concurrency-0"),
        pytest.param('name = "my node"', "name", id="name-with-space"),
        pytest.param('port = "seventy"', "port", id="port-string"),
        pytest.param("vllm_args = 3", "vllm_args", id="vllm_args-not-table"),
    ],
)
def test_bad_value_in_file(tmp_path, text, key):
    path = write(tmp_path, f"[node]\n{text}\n")
    assert key in str(config_error(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    message = str(config_error(path))
    assert str(path) in message


def test_directory_instead_of_file(tmp_path):
    config_error(tmp_path)


@pytest.mark.parametrize(
    "text",
    ['[node\nname = "x"\n', "name = \n", 'name = "unterminated\n', "port = 1\nport = 2\n", "= 3\n"],
    ids=["unclosed-table", "missing-value", "unterminated-string", "duplicate-key", "missing-key"],
)
def test_invalid_toml(tmp_path, text):
    path = write(tmp_path, text)
    message = str(config_error(path))
    assert "TOML" in message and str(path) in message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    config_error(path)


def test_openai_engine_needs_base_url(tmp_path):
    assert "openai_base_url" in str(config_error(name="n", engine="openai"))
    path = write(tmp_path, '[node]\nname = "g"\nengine = "openai"\n')
    assert "openai_base_url" in str(config_error(path))


def test_openai_engine_with_empty_base_url():
    config_error(name="n", engine="openai", openai_base_url="")


# --------------------------------------------------------------------------- state directory


def test_state_dir_defaults_under_xdg_state_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = load_config(NODES_DIR / "laptop.toml")
    assert config.resolved_state_dir == tmp_path / "dellm" / "nodes" / "laptop"
    # Follows the name, including an overridden one.
    assert load_config(NODES_DIR / "laptop.toml", name="lap2").resolved_state_dir == (
        tmp_path / "dellm" / "nodes" / "lap2"
    )


@pytest.mark.parametrize("xdg", [None, ""], ids=["unset", "empty"])
def test_state_dir_falls_back_to_local_state(monkeypatch, tmp_path, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(name="n").resolved_state_dir == tmp_path / ".local" / "state" / "dellm" / "nodes" / "n"


def test_explicit_state_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(name="n", state_dir=str(tmp_path / "s")).resolved_state_dir == tmp_path / "s"
    assert load_config(name="n", state_dir="~/ids").resolved_state_dir == tmp_path / "home" / "ids"


def test_swim_is_the_default_membership_of_nodes_and_coordinators_and_gossip_stays_selectable(monkeypatch):
    from dellm_p2p.identity import Identity
    from dellm_p2p.membership import Membership, SwimMembership, membership_for
    from dellm_p2p.peer_table import PeerTable
    from dellm_p2p.pool import PeerPool
    from dellm_p2p.swarm import Swarm

    def built(config: NodeConfig):
        me = Identity.generate()
        return membership_for(
            config, node_id=me.node_id, name="n", url="ws://127.0.0.1:7", model=None, capacity=0,
            table=PeerTable(me.node_id), pool=PeerPool(node_id=me.node_id, name="n", url=None), identity=me,
        )  # fmt: skip

    assert NodeConfig().membership == "swim" and isinstance(built(NodeConfig()), SwimMembership)
    assert isinstance(Swarm(mdns=False).membership, SwimMembership)
    assert isinstance(built(NodeConfig(membership="gossip")), Membership)
    assert isinstance(Swarm(mdns=False, membership="gossip").membership, Membership)
    monkeypatch.setenv("DELLM_MEMBERSHIP", "gossip")
    assert NodeConfig().membership == "gossip" and isinstance(Swarm(mdns=False).membership, Membership)
    with pytest.raises(ValueError, match="membership"):
        Swarm(mdns=False, membership="heartbeat")
