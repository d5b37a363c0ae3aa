# syntax=docker/dockerfile:1
#
# Images of the digits service. One file, three targets:
#
#   api      (the default, last stage)  CPU serving on python:3.11-slim: ONNX Runtime, no torch
#                docker build -t digits .
#   api-gpu  CUDA serving on NVIDIA's CUDA + cuDNN runtime image with onnxruntime-gpu
#                docker build --target api-gpu -t digits-gpu .
#   train    training with CPU-only torch; writes models into a mounted /app/models
#                docker build --target train -t digits-train .
#
# The serving images run as an unprivileged user (uid 10001), carry the shipped models in
# /app/models (mount a folder there to serve others), report healthy once GET /readyz answers
# 200, and are configured with DIGITS_* variables (see the README's settings table).
# Only the files named in the COPY lines below are sent to the builder (.dockerignore).

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --------------------------------------------------------------------------- common base
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 digits \
 && useradd --system --uid 10001 --gid digits --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin digits

# --------------------------------------------------------------------------- CPU serving: build
# A virtualenv in /opt/venv, copied whole into the final stage: no pip, no build leftovers there.
FROM python-base AS api-build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md cli.py ./
COPY core/ core/
COPY service/ service/
COPY training/ training/
COPY clients/ clients/
# Non-editable install: the package lands in site-packages, so the models folder is set by
# DIGITS_MODELS_DIR below instead of being found beside the sources.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[serve]" \
 && python -c "import importlib.util, sys; sys.exit('torch must not be in the serving image' if importlib.util.find_spec('torch') else 0)"

# --------------------------------------------------------------------------- GPU serving
# NVIDIA's runtime image brings CUDA 12 and cuDNN 9, what onnxruntime-gpu's CUDA 12 builds need.
# Ubuntu 24.04's Python is 3.12 (the project needs 3.11 or newer).
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 digits \
 && useradd --system --uid 10001 --gid digits --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin digits

FROM gpu-base AS api-gpu-build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md cli.py ./
COPY core/ core/
COPY service/ service/
COPY training/ training/
COPY clients/ clients/
# onnxruntime and onnxruntime-gpu install the same Python module, so the CPU build that the
# serve extra brings is replaced by the gpu extra's (its version range lives in pyproject.toml).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[serve]" \
 && pip uninstall -y onnxruntime \
 && pip install ".[gpu]" \
 && python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

FROM gpu-base AS api-gpu
COPY --from=api-gpu-build /opt/venv /opt/venv
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
COPY models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    DIGITS_HOST=0.0.0.0 \
    DIGITS_PORT=8000 \
    DIGITS_MODELS_DIR=/app/models \
    DIGITS_DEVICE=cuda
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
# Exec form: uvicorn is PID 1 and gets SIGTERM itself, then finishes the requests in flight.
CMD ["digits", "serve"]

# --------------------------------------------------------------------------- training (CPU torch)
FROM python-base AS train-build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md cli.py ./
COPY core/ core/
COPY service/ service/
COPY training/ training/
COPY clients/ clients/
# torch comes from PyTorch's CPU-only index (the default wheel brings gigabytes of CUDA), at the
# exact version pinned in pyproject.toml's train extra, read from there so the pin has one home.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    torch_pin="$(python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['train']; print(next(d for d in deps if d.replace(' ', '').startswith('torch==')))")" \
 && echo "installing $torch_pin from $TORCH_INDEX_URL" \
 && pip install --index-url "$TORCH_INDEX_URL" "$torch_pin" \
 && pip install ".[train]"

FROM python-base AS train
COPY --from=train-build /opt/venv /opt/venv
COPY deploy/train.sh /app/deploy/train.sh
# The folders are usually volumes; a run as another uid (to own files in a bind mount) can still
# write to them, and a fresh named volume takes this mode over.
RUN mkdir -p /app/models /app/runs /data \
 && chmod 1777 /app/models /app/runs /data
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    DIGITS_MODELS_DIR=/app/models \
    DIGITS_RUNS_DIR=/app/runs \
    DIGITS_DATA_DIR=/data
WORKDIR /app
USER 10001:10001
# Through sh: works whether or not the script kept its executable bit.
ENTRYPOINT ["/bin/sh", "/app/deploy/train.sh"]
CMD ["lenet5", "--augment", "--epochs", "20", "--lr", "0.002", "--dropout", "0.1"]

# --------------------------------------------------------------------------- CPU serving (default)
FROM python-base AS api
COPY --from=api-build /opt/venv /opt/venv
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
COPY models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    DIGITS_HOST=0.0.0.0 \
    DIGITS_PORT=8000 \
    DIGITS_MODELS_DIR=/app/models \
    DIGITS_DEVICE=cpu
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
# Exec form: uvicorn is PID 1 and gets SIGTERM itself, then finishes the requests in flight.
CMD ["digits", "serve"]
