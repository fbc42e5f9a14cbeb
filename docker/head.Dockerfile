# The head: OpenAI API, dispatcher, autoscaler, worker and model managers.
# Build from the repository root: docker build -f docker/head.Dockerfile -t sllm-head .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sllm ./sllm
COPY lua ./lua
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 sllm
USER 10001
ENV SLLM_HOST=0.0.0.0 SLLM_PORT=8343
EXPOSE 8343
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8343/health', timeout=2)"]
ENTRYPOINT ["sllm"]
CMD ["head"]
