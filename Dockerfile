# reftrack worker image (SPEC §8). Build from the repository root:
#
#   docker build -t reftrack:0.1.0 .
#   docker run --rm -e REFTRACK_PSEUDONYM_KEY=... -e REFTRACK_KAFKA_BOOTSTRAP=... \
#     -e REFTRACK_CLICKHOUSE_DSN=http://user:pass@clickhouse:8123/ \
#     -e REFTRACK_WEB_BIND=0.0.0.0 -e REFTRACK_API_TOKEN=... -p 6066:6066 reftrack:0.1.0
#
# The web endpoints bind to loopback unless REFTRACK_WEB_BIND says otherwise; with a
# non-loopback bind (needed for Prometheus and the live page from outside the container)
# the worker refuses to start without REFTRACK_API_TOKEN. See deploy/docker/README.md.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- builder: a wheel of reftrack, and a venv with the locked dependencies ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, so that code changes reuse this layer. --no-deps: the lock is the
# whole dependency set; `pip check` below fails the build if it is incomplete.
COPY deploy/docker/requirements.lock deploy/docker/build-requirements.lock /src/deploy/docker/
RUN python -m venv /opt/reftrack \
 && /opt/reftrack/bin/pip install --no-deps --requirement deploy/docker/requirements.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --requirement deploy/docker/build-requirements.lock

COPY pyproject.toml README.md /src/
COPY schemas /src/schemas
COPY streams /src/streams
COPY sinks /src/sinks
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
 && /opt/reftrack/bin/pip install --no-deps /dist/reftrack-*.whl \
 && /opt/reftrack/bin/pip check \
 && /opt/reftrack/bin/reftrack --help > /dev/null

# --- runtime: slim Python, the venv, a non-root user ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="reftrack" \
      org.opencontainers.image.description="Real-time referral tracking: Kafka events in, referral status and KPIs in ClickHouse out" \
      org.opencontainers.image.version="0.1.0"

ENV PATH=/opt/reftrack/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REFTRACK_DATA_DIR=/var/lib/reftrack \
    REFTRACK_WEB_PORT=6066

# A fixed uid/gid, so that volume ownership is predictable across rebuilds. The data
# dir is created and owned before VOLUME, so a new named volume starts out writable.
RUN groupadd --system --gid 10001 reftrack \
 && useradd --system --uid 10001 --gid reftrack --no-create-home \
      --home-dir /var/lib/reftrack --shell /usr/sbin/nologin reftrack \
 && mkdir -p /var/lib/reftrack \
 && chown reftrack:reftrack /var/lib/reftrack

COPY --from=builder /opt/reftrack /opt/reftrack

USER 10001:10001
WORKDIR /var/lib/reftrack
VOLUME ["/var/lib/reftrack"]
EXPOSE 6066

# Liveness only (/healthz); readiness is /readyz. Python's urllib, since slim has no
# curl; it exits non-zero on a refused connection, a timeout or a non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REFTRACK_WEB_PORT', '6066'), timeout=4)"]

# SIGTERM is the graceful shutdown signal: the sink flushes and commits before exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["reftrack"]
CMD ["worker"]
