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

# The package is built into a wheel and installed like any user would install
# it: the migrations ship inside the package (app/store/migrations/).
FROM python:3.11-slim AS wheel

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-deps --wheel-dir /wheels .

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
# reinstall them (with the broker clients of the `brokers` extra): a stub
# package is enough for pip to resolve and install
# them; the stub itself is uninstalled at once.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && pip install ".[brokers,tracing]" \
    && pip uninstall --yes eventrelay \
    && rm -rf app pyproject.toml README.md

# The wheel, into site-packages; nothing of the checkout stays in the image.
# The check runs the migrations' lookup as `eventrelay migrate` will.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/eventrelay-*.whl \
    && python -c "from app.store.migrations import head_revision; assert head_revision()"

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
