# syntax=docker/dockerfile:1
# Tributary, GPU image: CUDA runtime base, torch's CUDA build, FAISS's GPU build.
# Build from the repository root (the build context is filtered by .dockerignore):
#   docker build -f docker/gpu.Dockerfile -t ghcr.io/tributary/tributary:0.1.0-gpu .
# The project is installed by the Makefile's own `make setup` (one source of truth for the torch
# pin, the extras and their order); then the [gpu] extra's FAISS build replaces faiss-cpu.
# Needs an NVIDIA driver >= 580 on the host (CUDA 13, what PyPI's torch 2.13.0 is built for).

ARG BASE_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS builder

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Ubuntu 24.04's python3 is 3.12; make runs the Makefile's `setup` target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tributary
COPY pyproject.toml Makefile README.md ./
COPY indexer ./indexer
COPY service ./service
COPY client ./client

# PyPI's torch wheel for Linux x86_64 is the CUDA build (its CUDA libraries come as wheels), so
# the Makefile's TORCH_SPEC is used as it is.
RUN --mount=type=cache,target=/root/.cache/pip \
    make setup VENV=/opt/venv EXTRAS=service PYTHON=python3

# faiss-cpu (from the [indexer] extra) and the [gpu] extra's FAISS build install the same
# `faiss` module: remove one before adding the other.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/python -m pip uninstall -q -y faiss-cpu \
 && /opt/venv/bin/python -m pip install -q -e ".[gpu]"

# -------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="tributary" \
      org.opencontainers.image.description="Training-data attribution for LLMs (CUDA)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/tributary/tributary"

ENV DEBIAN_FRONTEND=noninteractive

# python3: the interpreter the venv was made with; libgomp1: OpenMP for FAISS; tini: PID 1 that
# forwards signals and reaps torchrun's worker processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid tributary --create-home --home-dir /home/tributary \
        --shell /usr/sbin/nologin tributary \
 && mkdir -p /index /state /data \
 && chown tributary:tributary /index /state

# The editable install points at /opt/tributary and the venv at /usr/bin/python3: both keep the
# paths they had in the build stage.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/tributary /opt/tributary
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/tributary-entrypoint

# Caches go to /tmp (an emptyDir or tmpfs under a read-only root filesystem); models and indexes
# are local paths, never fetched from a hub. (DL3064 reads the TOKEN in TOKENIZERS_PARALLELISM,
# a switch, as a secret.)
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    TRITON_CACHE_DIR=/tmp/triton \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TRIBUTARY_HOST=0.0.0.0 \
    TRIBUTARY_PORT=8000 \
    TRIBUTARY_INDEX=/index \
    TRIBUTARY_STATE_DIR=/state \
    TRIBUTARY_DEVICE=cuda

# /index: the index, mounted read-only by the service (read-write by `index build`);
# /state: batch jobs (SQLite), the service's only writes.
VOLUME ["/index", "/state"]
USER 10001:10001
WORKDIR /home/tributary
EXPOSE 8000

# The server listens only once the index and model are loaded: the start period covers that.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TRIBUTARY_PORT', '8000') + '/healthz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/tributary-entrypoint"]
CMD ["serve"]
