# scratchllm inference server, CPU only (docs/serve.md, "Container").
#   docker build -t scratchllm-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/model-int8:/model:ro" scratchllm-serve
# The mounted directory holds config.json + model.safetensors (+ quantization.json) and the tokenizer
# files (scratchllm quantize and the pipeline's quantize stage copy them in; otherwise mount the tokenizer too
# and append tokenizer=/tokenizer). Any ServeConfig key can be appended: docker run ... scratchllm-serve max_pending=32
# The API key comes from $SCRATCHLLM_API_KEY or a secret file named by $SCRATCHLLM_API_KEY_FILE, never the image.
#
# BASE: any Debian-like image with python3.11+ and pip on PATH. TORCH: what `pip install` gets for torch:
# by default the pinned CPU wheel from its index (no CUDA libraries); offline, a local wheel.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first (its own layer, reused while the project changes), minus what serving never loads: C++ test
# binaries and headers (headers only serve C++ extensions and torch.compile, which needs a compiler the image lacks).
RUN pip install ${TORCH} \
 && python -c "import pathlib, shutil, sysconfig; t = pathlib.Path(sysconfig.get_paths()['purelib'], 'torch'); \
[shutil.rmtree(t / d) for d in ('test', 'include') if (t / d).is_dir()]; \
[p.unlink() for p in (t / 'bin').glob('test_*')]"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY configs ./configs
# The runtime dependencies minus those only training and the report use (matplotlib, tensorboard) and the
# pipeline's client check (openai): the server imports none of them.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
skip = ('torch', 'matplotlib', 'tensorboard', 'openai'); \
open('/tmp/requirements.txt', 'w').write(''.join(d + '\n' for d in deps if not d.startswith(skip)))" \
 && pip install -r /tmp/requirements.txt && pip install --no-deps . && rm -rf /tmp/requirements.txt src build \
 && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin app
USER 10001:10001

EXPOSE 8000
# Liveness: /health answers as soon as the process serves HTTP, also while a request is generating.
# (/ready is the readiness check: 200 once the model is loaded; see docs/serve.md for zero-downtime upgrades.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1

ENTRYPOINT ["scratchllm", "serve", "--config", "configs/serve/default.toml", "model=/model", "host=0.0.0.0", "port=8000"]
