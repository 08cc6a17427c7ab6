# syntax=docker/dockerfile:1
# One image for `cibot serve`, every Celery worker and `cibot ci`, installed from the
# hash-pinned lock exactly as the README's quickstart does. Runs as UID 10001.
#   docker build -t cibot:local .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/cibot
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY requirements.lock ./
RUN /opt/cibot/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY workers ./workers
COPY policies ./policies
RUN /opt/cibot/bin/pip install --no-deps . && /opt/cibot/bin/cibot --help > /dev/null

FROM ${PYTHON_IMAGE}
# git: the tests job fetches the PR's head commit. bubblewrap: generated tests run only
# inside bwrap (workers/sandbox.py), which needs unprivileged user namespaces from the
# container runtime (compose.yaml and deploy/kubernetes say how).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cibot \
 && useradd --system --uid 10001 --gid cibot --home-dir /var/lib/cibot --create-home \
      --shell /usr/sbin/nologin cibot \
 && install -d -o cibot -g cibot /var/lib/cibot/spool
COPY --from=build /opt/cibot /opt/cibot
ENV PATH=/opt/cibot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    CIBOT_SPOOL_PATH=/var/lib/cibot/spool/cibot-spool.db
WORKDIR /var/lib/cibot
USER 10001:10001
# 8080: POST /webhook, GET /healthz (behind your proxy); 8081: the admin listener
# (GET /metrics, GET /dashboard); 9808: a worker's metrics and health endpoint.
EXPOSE 8080 8081 9808
CMD ["cibot", "serve", "--host", "0.0.0.0", "--port", "8080"]
