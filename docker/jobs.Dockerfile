# syntax=docker/dockerfile:1
# The jobs image: every pod of an experiment runs it (srum stage ..., torchrun -m srum_jobs.stages.train,
# srum orchestrate). Build from the repository root:
#   docker build -f docker/jobs.Dockerfile -t ghcr.io/srum/srum-jobs:0.1.0 .
# torch comes from the base image: pyproject.toml leaves it out on purpose, so pip keeps the CUDA build.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# Extra packages some adapters need on GPUs, e.g. EXTRA_PIP="flash-attn==2.8.3" for Bagel.
ARG EXTRA_PIP=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/srum
COPY pyproject.toml README.md ./
COPY srum_jobs ./srum_jobs
# nemo-automodel (Bagel's modelling code) without its dependencies: they would replace transformers.
# For Bagel inference pass a flash-attn build matching the base image's torch and CUDA in EXTRA_PIP.
RUN pip install ".[models]" \
 && pip install --no-deps nemo-automodel==0.7.0 \
 && if [ -n "${EXTRA_PIP}" ]; then pip install ${EXTRA_PIP}; fi \
 && srum --help > /dev/null

# A fixed non-root uid: the pods' securityContext (runAsUser 1000, runAsNonRoot) matches it.
RUN (getent passwd 1000 && userdel --remove "$(getent passwd 1000 | cut -d: -f1)" || true) \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin srum
USER 1000:1000
WORKDIR /home/srum

ENTRYPOINT ["srum"]
CMD ["--help"]
