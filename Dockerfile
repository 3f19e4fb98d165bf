# syntax=docker/dockerfile:1
# The Felix image: `felix serve` as PID 1, non-root, nothing written outside /var/lib/felix.
# Build:  docker build -t felix:0.1.0 .
# Run:    docker run --rm felix:0.1.0 --help
# Kubernetes: deploy/README.md (the same image runs `felix broker-agent` for the brokers).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: build the project's wheel and install it into a self-contained venv ------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY felix ./felix
RUN python -m venv /opt/felix \
 && /opt/felix/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/felix/bin/pip install /tmp/wheels/felix-*.whl \
 && /opt/felix/bin/pip uninstall -y pip setuptools \
 && find /opt/felix -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/felix/bin/python -c "import felix.cli"

# --- runtime: the same base (the venv's interpreter link points into it), no build tools -
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="felix" \
      org.opencontainers.image.description="Felix control plane: Raft for cluster metadata, watch streams for brokers"
ENV PATH=/opt/felix/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The data directory is the only writable place (a volume; on Kubernetes a PVC).  The
# numeric uid/gid match the manifests' securityContext (runAsUser/fsGroup 10001).
RUN groupadd --system --gid 10001 felix \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/felix --no-create-home \
      --shell /usr/sbin/nologin felix \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/felix /etc/felix
COPY --from=builder /opt/felix /opt/felix
USER 10001:10001
WORKDIR /var/lib/felix
VOLUME ["/var/lib/felix"]
# peer (Raft, TCP), client API (WebSocket), ops (/livez /readyz /metrics, HTTPS)
EXPOSE 7001/tcp 8001/tcp 9001/tcp
# Exec form: felix itself is PID 1 and handles SIGTERM (leadership hand-off, then a
# graceful stop: felix/server/app.py); no shell runs at any time.
ENTRYPOINT ["felix", "serve"]
CMD ["--config", "/etc/felix/felix.toml"]
