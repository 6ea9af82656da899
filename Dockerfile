# syntax=docker/dockerfile:1
#
# eventrelay: one image for `serve` (default), `worker` and `migrate`.
#
#   docker build -t eventrelay .
#   docker run -p 8000:8000 -v eventrelay-data:/data eventrelay
#
# Without EVENTRELAY_ADMIN_TOKEN the first start prints one line
# `admin token: <token>` to the logs. SQLite lives in /data by default; see
# docker-compose.yml for PostgreSQL with separate API and worker processes.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 eventrelay \
    && useradd --system --uid 10001 --gid eventrelay --no-create-home \
        --home-dir /srv/eventrelay --shell /usr/sbin/nologin eventrelay \
    && mkdir -p /data \
    && chown eventrelay:eventrelay /data

WORKDIR /srv/eventrelay

# Dependencies first, from pyproject.toml alone, so a code change does not
# reinstall them: a stub package is enough for pip to resolve and install.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && pip install -e . \
    && rm -rf app

# Editable install on purpose: the Alembic scripts live in ./alembic beside
# the package and app/store/migrations.py finds them relative to app/
# (SCRIPT_LOCATION = /srv/eventrelay/alembic). A regular wheel install would
# put app/ in site-packages, away from them.
COPY app ./app
COPY alembic ./alembic
RUN pip install --no-deps -e . \
    && python -c "from app.store.migrations import SCRIPT_LOCATION as s; assert (s / 'env.py').is_file(), s" \
    && python -m compileall -q app alembic

ENV EVENTRELAY_DATABASE_URL=sqlite+aiosqlite:////data/eventrelay.db \
    HEALTHCHECK_URL=http://127.0.0.1:8000/healthz

# Numeric, so orchestrators can verify runAsNonRoot.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

# No curl in the slim image; Python's urllib raises on anything but 2xx.
# Override HEALTHCHECK_URL when the process is not `serve` on port 8000
# (docker-compose.yml points the worker at its metrics port).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]

# The API finishes in-flight work within its grace period on SIGTERM; give
# `docker stop` more than that (docker stop -t 30, or stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["eventrelay", "serve", "--host", "0.0.0.0"]
