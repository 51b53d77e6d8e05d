# syntax=docker/dockerfile:1
# The judge server image: NVIDIA's Triton server plus the srum package (the python-backend models import it)
# and the model repository triton_models/ at /models. Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t ghcr.io/srum/srum-triton:0.1.0 .
# k8s/ and the Helm chart start it as: tritonserver --model-repository=/models --model-control-mode=none ...
# Python packages are pinned by docker/constraints.txt (the versions the test suite passed with).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.06-py3
FROM ${TRITON_IMAGE}

# The python backend runs models with the image's system Python: install torch for it, pinned.
ARG TORCH_SPEC="torch==2.7.1 torchvision==0.22.1"
ARG EXTRA_PIP=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

WORKDIR /opt/srum
COPY pyproject.toml README.md ./
COPY docker/constraints.txt ./constraints.txt
COPY srum_jobs ./srum_jobs
# TORCH_SPEC is pinned in its ARG above; hadolint cannot see through the variable (DL3013).
# hadolint ignore=DL3013
RUN pip install ${TORCH_SPEC} \
 && pip install --constraint constraints.txt ".[models]" \
 && pip install --no-deps nemo-automodel==0.7.0 \
 && if [ -n "${EXTRA_PIP}" ]; then pip install --constraint constraints.txt ${EXTRA_PIP}; fi

COPY triton_models /models

# A non-root uid above 10000 (never a user of the node's own); k8s/ and the chart run the pods as 10001.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin srum
USER 10001:10001

ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--model-control-mode=none"]
