"""The container image (issue 26): build it, run a two-node swarm from it, stop a node with SIGTERM.

Needs a running Docker daemon (skipped where ``docker info`` fails, as on CI). The containers use
the host's network and listen on 127.0.0.1 only. The build needs the base image locally or from
its registry, and the package indexes; where they are out of reach:

* ``DELLM_TEST_BASE_IMAGE``: the base image to build on (the Dockerfile's ``BASE_IMAGE`` argument),
  e.g. a Debian bookworm made with ``debootstrap`` and ``docker import`` (docs/deploy.md);
* ``DELLM_TEST_WHEELS``: a directory of wheels put in ``docker/wheels/`` (torch's ``+cpu`` build;
  default ``/opt/wheels`` where it exists), which also turns PyTorch's index off;
* the CA bundle of ``SSL_CERT_FILE`` (when set) is trusted by the build (``docker/certs/``).

``DELLM_TEST_IMAGE`` names an image already built from this Dockerfile to run instead of building.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .test_deploy import ROOT, free_port, key_files

pytestmark = pytest.mark.slow

IMAGE = "dellm-p2p:test"
MODEL = "SmolLM2-135M-Instruct"


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=check)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """Build the image from a copy of the Dockerfile's context (up to an hour on 2 cores, cached after)."""
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.skip("no container engine: `docker info` fails (no daemon)")
    if os.environ.get("DELLM_TEST_IMAGE"):
        return os.environ["DELLM_TEST_IMAGE"]
    base = os.environ.get("DELLM_TEST_BASE_IMAGE")
    wanted = base or "debian:bookworm-slim"  # the Dockerfile's BASE_IMAGE default
    if docker("image", "inspect", wanted, check=False).returncode != 0:
        if docker("pull", wanted, timeout_s=600, check=False).returncode != 0:
            pytest.skip(f"the base image {wanted} is neither here nor pullable (set DELLM_TEST_BASE_IMAGE)")
    context = tmp_path_factory.mktemp("context")
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "dellm_p2p", context / "dellm_p2p", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "docker", context / "docker", ignore=shutil.ignore_patterns("*.whl", "*.crt"))
    args = ["build", "--network", "host", "-t", IMAGE]
    if base:
        args += ["--build-arg", f"BASE_IMAGE={base}"]
    wheels = Path(os.environ.get("DELLM_TEST_WHEELS", "/opt/wheels"))
    if wheels.is_dir() and any(wheels.glob("*.whl")):
        for wheel in wheels.glob("*.whl"):
            shutil.copy(wheel, context / "docker" / "wheels" / wheel.name)
        args += ["--build-arg", "TORCH_INDEX="]
    if os.environ.get("SSL_CERT_FILE") and Path(os.environ["SSL_CERT_FILE"]).is_file():
        shutil.copy(os.environ["SSL_CERT_FILE"], context / "docker" / "certs" / "build-ca.crt")
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: no BuildKit plugin needed
    done = subprocess.run(
        ["docker", *args, str(context)], capture_output=True, text=True, timeout=3600, env=env, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


def wait_ready(name: str, timeout_s: float = 900) -> None:
    """Until the container's node prints its ready line (fails with its log if it exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = docker("logs", "--tail", "50", name, check=False)
        if any(line.startswith("dellm-node ") for line in logs.stdout.splitlines()):
            return
        state = docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
        if state == "false":
            break
        time.sleep(2)
    pytest.fail(f"container {name} did not get ready: {logs.stdout[-1500:]} {logs.stderr[-3000:]}")


def get_json(url: str, key: str | None = None, body: dict | None = None, timeout_s: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_image_runs_a_two_node_swarm_and_stops_cleanly(image, tmp_path):
    config = json.loads(docker("inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["dellm-node"]
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.chmod(0o755)  # the image's user must reach the files (pytest's directories are 0700)
    cluster, api, _ = key_files(keys)
    if os.geteuid() == 0:  # the image's user must read them; they stay mode 0600
        for path in (cluster, api):
            os.chown(path, 10001, 10001)
    else:
        for path in (cluster, api):
            path.chmod(0o644)
    api_key = api.read_text().strip()
    port_a, port_b, http = free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")
    names = [f"dellm-test-a-{os.getpid()}", f"dellm-test-b-{os.getpid()}"]
    common = ["--network", "host", "--shm-size", "1g", "-v", f"{keys}:/keys:ro"]
    node = ["--host=127.0.0.1", "--cluster-key-file=/keys/cluster.key"]
    try:
        docker(
            "run", "-d", "--name", names[0], *common, image, *node, "--name=a", f"--port={port_a}",
            f"--peer=ws://127.0.0.1:{port_b}", "--cpu-bind=0", f"--http-port={http}", "--api-key-file=/keys/api.key",
        )  # fmt: skip
        docker(
            "run", "-d", "--name", names[1], *common, image, *node, "--name=b", f"--port={port_b}",
            f"--peer=ws://127.0.0.1:{port_a}", "--cpu-bind=1",
        )  # fmt: skip
        for name in names:
            wait_ready(name)
        health = f"http://127.0.0.1:{http}/health"
        deadline = time.monotonic() + 60
        while True:
            status, body = get_json(health)
            if status == 200 and body["models"].get(MODEL) == 2:
                break
            assert time.monotonic() < deadline, body
            time.sleep(1)
        question = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        status, body = get_json(f"http://127.0.0.1:{http}/v1/chat/completions", api_key, question | {"max_tokens": 16})
        assert status == 200 and body["choices"][0]["message"]["content"].strip(), body
        docker("stop", "-t", "60", names[1], timeout_s=90)  # SIGTERM to PID 1: dellm-node itself
        assert docker("inspect", "-f", "{{.State.ExitCode}}", names[1]).stdout.strip() == "0"
        assert "shutting down" in docker("logs", names[1]).stderr
        deadline = time.monotonic() + 30
        while get_json(health)[1]["models"].get(MODEL) != 1:  # its goodbye reached the other node
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        for name in names:
            docker("rm", "-f", name, check=False)
