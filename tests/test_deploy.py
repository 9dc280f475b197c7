"""The deployment files run the real CLI (issue 26): the node command lines of ``compose.yaml`` and the
Kubernetes StatefulSet are taken from the YAML and run as they are, with only what a container
platform provides replaced: loopback addresses for the containers' (127.0.0.x, through the
SIMULATED DNS of :mod:`tests.fake_dns`), free ports, temporary key files and state directories,
and ``--no-model``. The nodes must form one network.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dellm_p2p.client import PeerClient, PeerError

from .fake_dns import ENV as DNS_ENV
from .test_dns_bootstrap import common_free_port

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"


def load_all(path: Path) -> list[dict]:
    with open(path) as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def statefulset() -> dict:
    (sts,) = [d for d in load_all(K8S / "statefulset.yaml") if d["kind"] == "StatefulSet"]
    return sts


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split(arg: str) -> tuple[str, str | None]:
    name, eq, value = arg.partition("=")
    return (name, value) if eq else (arg, None)


class Launched:
    """A node started from a deployment file's command line (``python -m tests.fake_dns ARGS``)."""

    def __init__(self, args: list[str], env: dict[str, str], dns: dict[str, list[str]]):
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_dns", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", DNS_ENV: json.dumps(dns), **env},
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the node prints its ready line (fails with its stderr if it exits first)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # the node prints its ready line, or exits (EOF)
            if line.startswith("dellm-node "):
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        pytest.fail(f"node {self.args} did not start: {self.stderr()}")

    def stderr(self) -> str:
        try:
            return self.proc.communicate(timeout=5)[1][-2000:]
        except (subprocess.TimeoutExpired, ValueError):
            return ""

    def stop(self) -> int | None:
        """SIGTERM, as a container platform stops it; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


async def alive_ids(url: str, key: bytes) -> set[str]:
    """Node ids the node at ``url`` holds alive, itself included (empty when it does not answer)."""
    try:
        async with asyncio.timeout(5):
            async with await PeerClient.connect(url, name="test", timeout_s=5, cluster_key=key) as client:
                view = await client.peers(timeout_s=5)
                me = client.remote.node_id
    except (PeerError, TimeoutError, OSError):
        return set()
    return {me} | {row.node_id for row in view.peers if row.state == "alive"}


async def one_network(urls: list[str], key: bytes, timeout_s: float = 60.0) -> None:
    """Wait until every node holds all of them alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = await asyncio.gather(*(alive_ids(u, key) for u in urls))
        if all(len(v) == len(urls) and v == views[0] for v in views):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no single network within {timeout_s:g} s: {[sorted(v) for v in views]}")
        await asyncio.sleep(0.2)


def key_files(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A cluster key file (as `dellm keygen` writes) and an API key file, both mode 0600."""
    cluster, api = tmp_path / "cluster.key", tmp_path / "api.key"
    secret = secrets.token_bytes(32)
    cluster.write_text(secret.hex() + "\n")
    api.write_text(secrets.token_hex(16) + "\n")
    for path in (cluster, api):
        path.chmod(0o600)
    return cluster, api, secret


def expand_k8s(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of container args from the container's env."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


@pytest.mark.slow  # three node processes (no model)
async def test_kubernetes_statefulset_nodes_form_one_network(tmp_path):
    sts = statefulset()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    peer_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "peer")
    headless = sts["spec"]["serviceName"]
    cluster, api, secret = key_files(tmp_path)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    keys_dir = mounts["keys"]
    replicas = sts["spec"]["replicas"]
    hosts = [f"127.0.0.{30 + i}" for i in range(replicas)]
    port = common_free_port(hosts)
    dns = {headless: hosts}  # the headless Service's name: every pod's address
    nodes: list[Launched] = []
    urls = []
    try:
        for i, host in enumerate(hosts):
            pod_env = {"POD_NAME": f"{sts['metadata']['name']}-{i}", "POD_IP": host}
            env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
            args = []
            for raw in container["args"]:
                name, value = split(expand_k8s(raw, pod_env))
                if name in ("--host", "--http-host"):
                    value = host  # the pod's own address, never the wildcard here
                elif name == "--port":
                    value = str(port)
                elif name == "--http-port":
                    value = str(free_port(host))
                elif name in ("--advertise-url", "--peer"):
                    value = value.replace(f":{peer_port}", f":{port}")
                elif value and value.startswith(keys_dir + "/"):
                    value = str({"cluster.key": cluster, "api.key": api}[value.rsplit("/", 1)[1]])
                args.append(name if value is None else f"{name}={value}")
            args += ["--no-model", f"--state-dir={tmp_path / f'pod-{i}'}"]
            nodes.append(Launched(args, env, dns))
            urls.append(f"ws://{host}:{port}")
        for node in nodes:
            node.wait_ready()
        await one_network(urls, secret)
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0] * replicas  # SIGTERM: a clean leave


@pytest.mark.slow  # three node processes (no model)
async def test_compose_nodes_form_one_network(tmp_path):
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    cluster, api, secret = key_files(tmp_path)
    secret_files = {"cluster_key": cluster, "api_key": api}
    hosts = {name: f"127.0.0.{40 + i}" for i, name in enumerate(sorted(services))}
    port = common_free_port(list(hosts.values()))
    dns: dict[str, list[str]] = {name: [host] for name, host in hosts.items()}
    for name, service in services.items():  # a network alias resolves to every container that has it
        for network in service["networks"].values():
            for alias in (network or {}).get("aliases", []):
                dns.setdefault(alias, []).append(hosts[name])
    nodes: list[Launched] = []
    urls = []
    try:
        for name, service in sorted(services.items()):
            host = hosts[name]
            env = {k: str(v) for k, v in service.get("environment", {}).items()}
            # The image's ENV (Dockerfile): listen on every address (here: the container's), no mDNS.
            env.update({"DELLM_HOST": host, "DELLM_MDNS": "false"})
            args = []
            for raw in service["command"]:
                option, value = split(raw)
                if option == "--port":
                    value = str(port)
                elif option == "--http-port":
                    value = str(free_port(host))
                elif option == "--http-host":
                    value = host
                elif option in ("--advertise-url", "--peer"):
                    value = value.replace(":7070", f":{port}")
                elif value and value.startswith("/run/secrets/"):
                    value = str(secret_files[value.rsplit("/", 1)[1]])
                args.append(option if value is None else f"{option}={value}")
            args += ["--no-model", f"--state-dir={tmp_path / name}"]
            nodes.append(Launched(args, env, dns))
            urls.append(f"ws://{host}:{port}")
        for node in nodes:
            node.wait_ready()
        await one_network(urls, secret)
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0] * len(services)


def test_kubernetes_manifests_agree_with_each_other():
    """Probes, ports, the drain and the Services point at what the node command line opens."""
    sts = statefulset()
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = dict(split(a) for a in container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(args["--http-port"]) and ports["peer"] == ports["swim"] == int(args["--port"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > float(env["DELLM_GRACE_PERIOD_S"]) + 10
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["memory"] == requests["memory"] and limits["cpu"] == requests["cpu"]
    peers = load_all(K8S / "service-peers.yaml")[0]
    assert peers["metadata"]["name"] == sts["spec"]["serviceName"] and peers["spec"]["clusterIP"] == "None"
    assert args["--peer"] == f"ws://{peers['metadata']['name']}:{ports['peer']}"
    assert {p["port"] for p in peers["spec"]["ports"]} == {ports["peer"]}
    api = load_all(K8S / "service-api.yaml")[0]
    selector = sts["spec"]["selector"]["matchLabels"]
    assert api["spec"]["selector"] == selector == peers["spec"]["selector"]
    assert api["spec"]["ports"][0]["targetPort"] == "http"
    keys = next(v for v in pod["volumes"] if v["name"] == "keys")["secret"]["secretName"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.stem != "kustomization")
    assert keys == "dellm-keys"


def tool(name: str) -> str:
    """A linter installed with the test extras (scripts/setup.sh), beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = tool("hadolint")
    done = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"  # the check is live: a known mistake is reported
    broken.write_text("FROM debian:latest\nRUN cd /tmp && echo hi\n")
    done = subprocess.run([hadolint, str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3003" in done.stdout and "DL3007" in done.stdout


def test_kubernetes_manifests_pass_the_api_schema(tmp_path):
    validate = tool("kubernetes-validate")
    files = sorted(str(p) for p in K8S.glob("*.yaml") if p.stem != "kustomization")
    done = subprocess.run([validate, "--strict", *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    sts = statefulset()  # the check is live: a misspelt field is refused
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/health", "port": 1}}
    broken = tmp_path / "statefulset.yaml"
    broken.write_text(yaml.safe_dump(sts))
    done = subprocess.run([validate, "--strict", str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
