# syntax=docker/dockerfile:1
# Tributary, CPU image: the service and the indexer on torch's CPU build.
# Build from the repository root (the build context is filtered by .dockerignore):
#   docker build -f docker/cpu.Dockerfile -t ghcr.io/tributary/tributary:0.1.0 .
# The project is installed by the Makefile's own `make setup` (one source of truth for the torch
# pin, the extras and their order); deploy/README.md documents how to run it.

ARG BASE_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS builder

# make: to run the Makefile's `setup` target; nothing is compiled (every dependency is a wheel).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /opt/tributary
COPY pyproject.toml Makefile README.md ./
COPY indexer ./indexer
COPY service ./service
COPY client ./client

# PyPI's Linux torch wheel is the CUDA build; torch's CPU index serves `torch==X+cpu`, which
# satisfies the Makefile's TORCH_SPEC (torch==X) and sorts above it, so pip takes the CPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" \
    make setup VENV=/opt/venv EXTRAS=service PYTHON=python3

# -------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="tributary" \
      org.opencontainers.image.description="Training-data attribution for LLMs (CPU)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/tributary/tributary"

# tini: PID 1 that forwards signals and reaps torchrun's worker processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid tributary --create-home --home-dir /home/tributary \
        --shell /usr/sbin/nologin tributary \
 && mkdir -p /index /state /data \
 && chown tributary:tributary /index /state

# The editable install points at /opt/tributary and the venv at the base image's python3: both
# keep the paths they had in the build stage.
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
    TOKENIZERS_PARALLELISM=false \
    TRIBUTARY_HOST=0.0.0.0 \
    TRIBUTARY_PORT=8000 \
    TRIBUTARY_INDEX=/index \
    TRIBUTARY_STATE_DIR=/state

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
