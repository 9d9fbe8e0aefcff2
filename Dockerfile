# syntax=docker/dockerfile:1
# Build stage: exactly the dependency versions in uv.lock, as wheels checked against its hashes
# (no compiler needed: all ship manylinux wheels), and the project's own wheel.
FROM python:3.11-slim AS build
WORKDIR /src
COPY uv-requirements.txt ./
RUN pip install --no-cache-dir --require-hashes -r uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
COPY reconciler ./reconciler
RUN uv export --frozen --no-dev --no-emit-project --no-header --format requirements.txt \
      --output-file /wheels/requirements.txt \
 && pip wheel --no-cache-dir --only-binary=:all: --require-hashes --wheel-dir /wheels \
      -r /wheels/requirements.txt \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Final stage: the wheels installed, nothing to build with, a numeric non-root user.
FROM python:3.11-slim
# DL3013: what is installed is this project, from the wheel the build stage made; its
# dependencies are pinned by uv.lock's hashes.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes \
      -r /wheels/requirements.txt \
 && pip install --no-cache-dir --no-index --find-links=/wheels --no-deps nimbus-kubearmor
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8443 8081
ENTRYPOINT ["python", "-m", "reconciler"]
