# syntax=docker/dockerfile:1
# The jobs image: every pod of an experiment runs it (srum stage ..., python -m srum_jobs.stages.launch,
# srum orchestrate). Build from the repository root:
#   docker build -f docker/jobs.Dockerfile -t ghcr.io/srum/srum-jobs:0.1.0 .
# torch comes from the base image: pyproject.toml leaves it out on purpose, so pip keeps the CUDA build.
# Every other Python package is pinned by docker/constraints.txt (the versions the test suite passed with).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# Extra packages some adapters need on GPUs, pinned, e.g. EXTRA_PIP="flash-attn==2.8.3" for Bagel.
ARG EXTRA_PIP=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/srum
COPY pyproject.toml README.md ./
COPY docker/constraints.txt ./constraints.txt
COPY srum_jobs ./srum_jobs
# nemo-automodel (Bagel's modelling code) without its dependencies: they would replace transformers.
# For Bagel inference pass a flash-attn build matching the base image's torch and CUDA in EXTRA_PIP.
RUN pip install --constraint constraints.txt ".[models]" \
 && pip install --no-deps nemo-automodel==0.7.0 \
 && if [ -n "${EXTRA_PIP}" ]; then pip install --constraint constraints.txt ${EXTRA_PIP}; fi \
 && srum --help > /dev/null

# A fixed non-root uid above 10000 (never a user of the node's own); the pods' securityContext matches it.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin srum
USER 10001:10001
WORKDIR /home/srum

ENTRYPOINT ["srum"]
CMD ["--help"]
