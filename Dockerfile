# Two targets. The default (the last stage, `cpu`): one image for the three services; the command
# picks which one runs (`pscluster coordinator`, `pscluster ps`, `pscluster worker`); settings
# come from PSC_*. `docker build --target cuda -t pscluster-cuda .`: the same services with CuPy
# on CUDA 12, for GPU workers (deploy/k8s/overlays/gpu; docs/kubernetes.md).

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS cuda

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's Python is 3.12 (the project needs 3.11+); a venv keeps pip off the system's.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml constraints.txt ./
# The dependencies and the gpu extra (cupy-cuda12x), in their own layer.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY pscluster ./pscluster
COPY ps_server ./ps_server
COPY worker ./worker
COPY coordinator ./coordinator
COPY launcher ./launcher
RUN pip install --no-deps -c constraints.txt . && rm -rf build ./*.egg-info
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pscluster
USER pscluster
ENV PSC_HOST=0.0.0.0 PSC_BACKEND=cupy
EXPOSE 7200
ENTRYPOINT ["pscluster"]
CMD ["--help"]

FROM python:3.11-slim AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, pinned by constraints.txt, in their own layer: a code change reuses it.
# EXTRAS names optional extras to add: `docker build --build-arg EXTRAS=torch .` for PyTorch
# jobs (the coordinator and the workers run the model; shards never import torch), taking the
# CPU build from PyTorch's CPU index, without CUDA's libraries.
ARG EXTRAS=""
COPY pyproject.toml constraints.txt ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" $EXTRAS > /tmp/requirements.txt \
    && pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, installed without touching the dependencies again.
COPY README.md ./
COPY pscluster ./pscluster
COPY ps_server ./ps_server
COPY worker ./worker
COPY coordinator ./coordinator
COPY launcher ./launcher
RUN pip install --no-deps -c constraints.txt . && rm -rf build ./*.egg-info

# A non-root user; /data (a shard's checkpoints) is theirs, so a fresh named volume is too.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pscluster \
    && mkdir -p /data && chown pscluster:pscluster /data
USER pscluster

# In a container a service listens on every interface; compose sets PSC_PORT per service (and a
# shard's PSC_DATA_PORT, 7101: its data plane).
ENV PSC_HOST=0.0.0.0
EXPOSE 7000 7100 7101 7200

# /healthz on the service's own port (PSC_PORT); python, since the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "pscluster.healthcheck"]

ENTRYPOINT ["pscluster"]
CMD ["--help"]
