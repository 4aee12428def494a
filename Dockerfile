# syntax=docker/dockerfile:1
# The B12–iron CDS Hooks service, production image.
#   docker build -t b12-iron-cds .
#   docker run --read-only --tmpfs /tmp -v cds-data:/var/lib/cds-service -p 8080:8080 --stop-timeout 30 \
#     -e CDS_PUBLIC_BASE_URL=https://cds.example.org \
#     -e CDS_CLIENTS=/etc/cds/clients.json -v "$PWD/clients.json:/etc/cds/clients.json:ro" b12-iron-cds
# The build needs BuildKit (RUN --mount), Docker's builder by default since 23.0. Docker 20.10 (Debian
# 12's docker.io) still uses the legacy builder, which stops with "the --mount option requires
# BuildKit": there, run DOCKER_BUILDKIT=1 docker build -t b12-iron-cds .
# CDS_PUBLIC_BASE_URL is the URL the EHR calls: tokens' aud is checked against it, and without it the
# service would expect http://0.0.0.0:8080 and refuse every signed call. The clients file must be readable
# by the image's user, uid 10001 (a mode 0600 file owned by someone else stops the service at start).
# --stop-timeout 30: on SIGTERM gunicorn lets calls in flight finish for up to 25 s, but docker stop sends
# SIGKILL after 10 s unless told otherwise (Kubernetes: terminationGracePeriodSeconds in deploy/).
# For reproducible builds pin the base by digest as well (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- builder: wheels for the service and every dependency (with the Redis and PostgreSQL extras) ------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md image-constraints.txt ./
COPY cds_service ./cds_service
# Every dependency at the version pinned in image-constraints.txt (pip-compile; see docs/operations.md):
# a rebuild installs what was tested, not whatever the index holds that day. That includes the setuptools
# that builds the service's own wheel: pip's isolated build would take the newest, so it is installed at
# its pin and the service alone is built without isolation; the dependencies come as published wheels.
RUN pip install --constraint image-constraints.txt setuptools \
 && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && pip wheel --constraint image-constraints.txt --wheel-dir /wheels --find-links /wheels \
      'b12-iron-cds[redis,postgres]'

# --- runtime: only the installed wheels; no compiler, no source tree, no wheel files left behind ------
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CDS_FEEDBACK_DB=/var/lib/cds-service/feedback.sqlite3 \
    CDS_STATE_DB=/var/lib/cds-service/state.sqlite3 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/cds-metrics
# The wheels are bind-mounted from the builder for this one step, so they never become an image layer;
# pip compiles the bytecode here, which is why the service can run with a read-only root file system.
# Only the builder's wheels can be installed (--no-index), and those were pinned by image-constraints.txt.
# The mount point stays behind as an empty directory, so it is under /tmp, which runs on a tmpfs.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    pip install --no-index --find-links=/tmp/wheels 'b12-iron-cds[redis,postgres]' \
 && groupadd --system --gid 10001 cds \
 && useradd --system --uid 10001 --gid cds --home-dir /var/lib/cds-service --no-create-home \
      --shell /usr/sbin/nologin cds \
 && install -d -o cds -g cds -m 0750 /var/lib/cds-service
# SQLite state (JWT replay store, feedback when no PostgreSQL is configured) lives on this volume;
# /tmp (metrics files, gunicorn heartbeats when /dev/shm is absent) must be writable too (tmpfs).
VOLUME ["/var/lib/cds-service"]
WORKDIR /var/lib/cds-service
USER 10001:10001
EXPOSE 8080
# slim images have no curl: ask Python. /healthz is unauthenticated and touches no dependency.
# It assumes port 8080: change it here too if you pass another --port. It goes straight to 127.0.0.1,
# never through http_proxy/HTTP_PROXY (Docker puts them in every container when the client's config.json
# names a proxy): urlopen would send the check to the proxy, and the container would never be healthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# Exec form: gunicorn's master is PID 1 and receives SIGTERM itself for a graceful shutdown.
ENTRYPOINT ["cds-service", "serve", "--host", "0.0.0.0"]
CMD ["--port", "8080"]
