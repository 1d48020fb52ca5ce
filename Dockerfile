# The service's container image: kpack-image-builder run (see charts/kpack-image-builder).
#
#   docker build -t kpack-image-builder .
#
# The builder stage turns the project into wheels (its own and its dependencies'); the runtime stage
# installs them, from those wheels only, into a slim Python image and runs as a non-root user. (BuildKit,
# Docker's default builder, is needed for the RUN --mount that keeps the wheels out of the image.)

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels kpack-image-builder
USER 65532:65532
# 8080: /metrics; 8081: /healthz and /readyz
EXPOSE 8080 8081
ENTRYPOINT ["kpack-image-builder"]
CMD ["run"]
