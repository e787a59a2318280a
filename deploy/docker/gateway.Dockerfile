# syntax=docker/dockerfile:1
# aligngate gateway image: the base install alone (no torch), for running in front of vLLM.
#
#   docker build -f deploy/docker/gateway.Dockerfile -t aligngate:latest .      # from the repository root
#   docker run -p 8000:8000 -v $PWD/my-config.yaml:/etc/aligngate/config.yaml:ro aligngate:latest
#
# The build context is the repository root; deploy/docker/gateway.Dockerfile.dockerignore (BuildKit reads the
# ignore file named after the Dockerfile) keeps it to the files the build needs. Which files are copied is
# also spelled out below, so the image holds only the gateway even with a builder that ignores that file.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the distribution into a virtual environment ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/aligngate
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY models ./models
COPY train ./train
# The base install (starlette, uvicorn[standard], aiohttp, orjson, pydantic, prometheus-client, SQLAlchemy) plus
# the `postgres` extra (asyncpg) for the shared trace store and the `redis` extra for shared rate limits. Never
# `local`: no torch in this image (a test in tests/deploy fails if an extra that pulls torch appears on this line).
RUN /opt/aligngate/bin/pip install ".[postgres,redis]" \
    && /opt/aligngate/bin/pip check \
    && ! /opt/aligngate/bin/python -c "import torch" 2>/dev/null

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aligngate" \
      org.opencontainers.image.description="Inference-time alignment gateway (OpenAI-compatible), gateway only" \
      org.opencontainers.image.licenses="Apache-2.0"
# /var/lib/aligngate holds the trace store's spill files (records that wait while the database is down): mount a
# volume there so they survive a container restart (compose and the Helm chart do).
RUN groupadd --system --gid 10001 aligngate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/aligngate --create-home \
       --shell /usr/sbin/nologin aligngate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/aligngate
COPY --from=build /opt/aligngate /opt/aligngate
# The default config: the compose stack's (vLLM services on the compose network). Mount your own over it
# (compose and the Helm chart do).
COPY deploy/config/gateway.yaml /etc/aligngate/config.yaml
# In a container the gateway must listen beyond loopback; env overrides the config file (README: precedence),
# and the port is read back by HEALTHCHECK.
ENV PATH=/opt/aligngate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALIGNGATE_SERVER__HOST=0.0.0.0 \
    ALIGNGATE_SERVER__PORT=8000
USER 10001:10001
WORKDIR /home/aligngate
EXPOSE 8000
# /healthz is liveness only (no upstream calls); python's urllib because the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ALIGNGATE_SERVER__PORT', '8000'), timeout=4)"]
# SIGTERM drains in-flight requests (streams included) for up to server.graceful_timeout_s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aligngate", "serve"]
CMD ["--config", "/etc/aligngate/config.yaml"]
