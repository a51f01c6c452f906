# syntax=docker/dockerfile:1
# The bridge in one image: `bridge worker` by default; the same image runs
# `bridge beat`, `bridge emulator` and `bridge webhooks` (see docker-compose.yml).
ARG PYTHON_VERSION=3.11

# -- build: the package and every dependency as wheels -------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN python -m pip wheel --wheel-dir /wheels .

# -- run: the wheels installed, no build tools, no source tree, not root -------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels bridge \
 && useradd --create-home --uid 10001 --user-group bridge
COPY config /etc/bridge
USER bridge
WORKDIR /home/bridge
EXPOSE 8000 8081
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["bridge", "ping", "worker"]
CMD ["bridge", "worker", "--log-format", "json"]
