# syntax=docker/dockerfile:1
#
# Images of the digits service. One file, two images:
#
#   api      (the default, last stage)  serving: ONNX Runtime, no torch, no training code
#                docker build -t digits .
#              the same stage on NVIDIA's CUDA + cuDNN runtime image, with onnxruntime-gpu:
#                docker build --build-arg PYTHON_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                    --build-arg ONNXRUNTIME=gpu -t digits-gpu .
#   train    training with CPU-only torch; writes models into a mounted /app/models
#                docker build --target train -t digits-train .
#
# PYTHON_IMAGE is the base of both: any Debian or Ubuntu image. When it has no Python 3.11+ with
# venv (NVIDIA's images, a bare Debian), python3 and python3-venv are installed with apt.
# The serving image runs as an unprivileged user (uid 10001), carries the shipped models in
# /app/models (mount a folder there to serve others), reports healthy once GET /readyz answers
# 200, and is configured with DIGITS_* variables (see the README's settings table).
# Only the files named in the COPY lines below are sent to the builder (.dockerignore).
# Behind a TLS-intercepting proxy, mount its CA bundle for the build and name it in PIP_CERT:
#   --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca-bundle.crt:ro \
#   --build-arg PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt     (podman/buildah; see deploy/README.md)

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- common base
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
     && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'digits needs Python 3.11 or newer, the base image has ' + sys.version)" \
 && groupadd --system --gid 10001 digits \
 && useradd --system --uid 10001 --gid digits --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin digits

# --------------------------------------------------------------------------- serving: build
# A virtualenv in /opt/venv, copied whole into the final stage: no pip, no build leftovers there.
FROM python-base AS api-build
# cpu: onnxruntime (the serve extra's); gpu: onnxruntime-gpu (the gpu extra's) in its place.
ARG ONNXRUNTIME=cpu
ARG PIP_CERT
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md cli.py ./
COPY core/ core/
COPY service/ service/
COPY clients/ clients/
# Non-editable install: the package lands in site-packages, so the models folder is set by
# DIGITS_MODELS_DIR below instead of being found beside the sources. onnxruntime and
# onnxruntime-gpu install the same Python module, so for gpu the first is removed before the
# second comes (its version range lives in pyproject.toml). The image must hold neither torch,
# nor matplotlib, nor the training code.
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$ONNXRUNTIME" in cpu|gpu) ;; *) echo "ONNXRUNTIME must be cpu or gpu, not '$ONNXRUNTIME'" >&2; exit 2;; esac \
 && pip install ".[serve]" \
 && if [ "$ONNXRUNTIME" = gpu ]; then pip uninstall -y onnxruntime && pip install ".[gpu]"; fi \
 && python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())" \
 && python -c "import importlib.util as u, sys; found = [m for m in ('torch', 'matplotlib', 'training') if u.find_spec(m)]; sys.exit(f'not for the serving image: {found}' if found else 0)"

# --------------------------------------------------------------------------- training (CPU torch)
FROM python-base AS train-build
RUN python3 -m venv /opt/venv
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
ARG PIP_CERT
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

# --------------------------------------------------------------------------- serving (the default target)
FROM python-base AS api
# cpu, cuda or auto (the service's DIGITS_DEVICE); an image built with ONNXRUNTIME=gpu wants cuda:
# without a usable GPU it then exits at start with an explanation instead of running on the CPU.
ARG DEVICE=cpu
COPY --from=api-build /opt/venv /opt/venv
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
COPY models/ /app/models/
ENV PATH=/opt/venv/bin:$PATH \
    DIGITS_HOST=0.0.0.0 \
    DIGITS_PORT=8000 \
    DIGITS_MODELS_DIR=/app/models \
    DIGITS_DEVICE=${DEVICE}
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
# Exec form: uvicorn is PID 1 and gets SIGTERM itself: it drains for DIGITS_SHUTDOWN_DRAIN_S (if
# set), then finishes the requests in flight.
CMD ["digits", "serve"]
