# One image for the three services: the command picks which one runs
# (`pscluster coordinator`, `pscluster ps`, `pscluster worker`); settings come from PSC_*.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, pinned by constraints.txt, in their own layer: a code change reuses it.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
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

# In a container a service listens on every interface; compose sets PSC_PORT per service.
ENV PSC_HOST=0.0.0.0
EXPOSE 7000 7100 7200

# /healthz on the service's own port (PSC_PORT); python, since the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "pscluster.healthcheck"]

ENTRYPOINT ["pscluster"]
CMD ["--help"]
