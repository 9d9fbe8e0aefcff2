# syntax=docker/dockerfile:1
# Build stage: every dependency as a wheel (no compiler needed: all ship manylinux wheels).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Final stage: the wheels installed, nothing to build with, a numeric non-root user.
FROM python:3.11-slim
# DL3013: what is installed is this project, from the wheels the build stage pinned.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels nimbus-kubearmor
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "reconciler"]
