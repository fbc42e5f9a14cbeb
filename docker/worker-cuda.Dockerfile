# A GPU worker: CUDA runtime, torch with CUDA, transformers and vLLM.
# Build from the repository root: docker build -f docker/worker-cuda.Dockerfile -t sllm-worker-cuda .
# Run with the NVIDIA container toolkit: docker run --gpus all ...
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sllm ./sllm
COPY lua ./lua
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04
# Ubuntu 22.04's python3 is 3.10, which sllm supports; versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
# vLLM pins the torch (CUDA 12.8) and transformers it needs; peft and gguf follow them.
RUN pip3 install --no-cache-dir vllm==0.33.0 peft==0.21.2 gguf==0.19.0
COPY --from=build /wheels /wheels
RUN pip3 install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 sllm \
    && mkdir -p /models && chown sllm /models
USER 10001
ENV SLLM_HOST=0.0.0.0 SLLM_PORT=8001 SLLM_STORAGE_PATH=/models
VOLUME ["/models"]
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=2)"]
ENTRYPOINT ["sllm"]
CMD ["worker"]
