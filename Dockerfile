# scratchllm inference server, CPU only.
#   docker build -t scratchllm-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/model:/model:ro" scratchllm-serve
# The mounted directory holds config.json + model.safetensors (+ quantization.json) and the tokenizer
# files (scratchllm quantize copies them in; otherwise add tokenizer=/tokenizer and mount that too).
# Any ServeConfig key can be appended:  docker run ... scratchllm-serve api_key=sk-secret max_pending=32
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and pinned, from the CPU wheel index (no CUDA libraries: a much smaller image).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY configs ./configs
RUN pip install . && useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
# Liveness: /health answers as soon as the process serves HTTP, also while a request is generating.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1

ENTRYPOINT ["scratchllm", "serve", "--config", "configs/serve/default.toml", "model=/model", "host=0.0.0.0", "port=8000"]
