# The base of both stages: python:3.11-slim from the registry, or any image with `python` and
# `pip` on PATH (tests/image/base.py makes one from Debian's archive alone; `make image` uses it).
ARG BASE_IMAGE=python:3.11-slim

# Build stage: a virtualenv at /opt/app with exactly the dependency versions in uv.lock, from
# wheels checked against its hashes (no compiler needed: all ship manylinux wheels), then the
# project. The dependencies come first, so a change to the code alone reuses their layer.
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY uv-requirements.txt ./
RUN pip install --no-cache-dir --require-hashes -r uv-requirements.txt
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-dev --no-emit-project --no-header --format requirements.txt \
      --output-file requirements.txt \
 && python -m venv --without-pip /opt/app \
 && pip --python /opt/app/bin/python install --no-cache-dir --only-binary=:all: \
      --require-hashes -r requirements.txt
COPY README.md ./
COPY reconciler ./reconciler
RUN pip --python /opt/app/bin/python install --no-cache-dir --no-deps .

# Final stage: the virtualenv copied whole (COPY --from is cached by content; a RUN that mounts
# the build stage is not, by buildah), nothing to build or install with, a numeric non-root user.
FROM ${BASE_IMAGE}
COPY --from=build /opt/app /opt/app
ENV PATH=/opt/app/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8443 8081
ENTRYPOINT ["python", "-m", "reconciler"]
