# Soundverse Clips: the runtime image.
#   docker build -t soundverse-clips .
#   docker run --stop-timeout 45 -e DATABASE_URL=postgresql://… -p 8000:8000 soundverse-clips
# Docker's default stop timeout (10 s) is shorter than SHUTDOWN_GRACE (30 s):
# give the container more (docker-compose.yml sets stop_grace_period), or
# in-flight streams are killed instead of drained.

# Stage 1: wheels for requirements.txt only (the runtime set: no embedded
# PostgreSQL, no test tools), installed into a venv the final stage copies.
FROM python:3.11.16-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /build
COPY requirements.txt .
# The venv has no pip of its own: the base image's pip installs into it, so
# nothing in the final image can install packages.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        --find-links /wheels -r requirements.txt

# Stage 2: the same base, the venv, the application code, and tini.
FROM python:3.11.16-slim-bookworm

# tini as PID 1 forwards SIGTERM to the server and reaps zombies; the pin is
# Debian bookworm's build for amd64.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 clips \
    && useradd --system --uid 10001 --gid clips --no-create-home \
        --home-dir /app --shell /usr/sbin/nologin clips

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MEDIA_DIR=/app/media \
    CACHE_DIR=/app/cache

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY server.py settings.py ./
COPY handlers/ handlers/
COPY jobs/ jobs/
COPY web/ web/
COPY streaming/ streaming/
COPY storage/ storage/
COPY schemas/ schemas/
COPY metrics/ metrics/
COPY db/ db/
COPY sql/ sql/
COPY migrations/ migrations/
COPY deploy/entrypoint.sh deploy/
# Code stays root-owned and read-only to the app, compiled ahead of time;
# only MEDIA_DIR (uploads, `python -m db.seed`) and CACHE_DIR are the app user's.
RUN python -m compileall -q server.py settings.py handlers jobs web streaming storage schemas metrics db \
    && mkdir media cache \
    && chown clips:clips media cache

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# /healthz says the process serves; slim images have no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--", "/app/deploy/entrypoint.sh"]
