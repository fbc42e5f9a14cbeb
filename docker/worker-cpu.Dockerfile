# A CPU worker: runs backend instances (dummy now; transformers on the CPU once built).
# Build from the repository root: docker build -f docker/worker-cpu.Dockerfile -t sllm-worker-cpu .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sllm ./sllm
COPY lua ./lua
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
# The CPU build of torch: the default index would bring several GB of CUDA libraries.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir transformers==5.23.0 accelerate==1.15.0 peft==0.21.2 gguf==0.19.0
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 sllm \
    && mkdir -p /models && chown sllm /models
USER 10001
ENV SLLM_HOST=0.0.0.0 SLLM_PORT=8001 SLLM_STORAGE_PATH=/models
VOLUME ["/models"]
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=2)"]
ENTRYPOINT ["sllm"]
CMD ["worker"]
