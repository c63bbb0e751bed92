# A GPU image of anima-lora-flow for Prefect Docker and Kubernetes work pools, and for `docker run`:
#   docker build -t anima-lora-flow:0.1.0 .
#   docker run --gpus all -v anima-lora-cache:/cache -v anima-runs:/runs \
#       -v "$PWD/my_dataset:/data/my_dataset:ro" anima-lora-flow:0.1.0 train --dataset /data/my_dataset --storage /runs
# The host needs an NVIDIA driver for CUDA 13.0 (580 or newer) and the NVIDIA Container Toolkit.
# CUDA 13.0 is what the pinned torch wheel (deploy/constraints.txt) was built for; Ubuntu 24.04 brings Python 3.12.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
# git: the sd-scripts backend clones sd-scripts at its pinned commit. tini: PID 1 that passes SIGTERM on
# (the flow then stops the trainer and records the run as Crashed) and reaps the trainer's children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src
# torch first, in its own layer: a code change then rebuilds only the small layer below.
COPY deploy/constraints.txt deploy/constraints.txt
RUN pip install --constraint deploy/constraints.txt torch torchvision
COPY . .
RUN pip install --constraint deploy/constraints.txt . \
    && install -m 0755 deploy/docker/entrypoint.sh /usr/local/bin/anima-lora-entrypoint \
    && cd / && rm -rf /src

# Downloads (models, datasets, sd-scripts), the Hugging Face cache and Prefect's local home all live
# under /cache: a volume, so a second run on the same host or claim does not download the models again.
# Durable run storage (states, LoRAs) is --storage: a gs://, s3:// or hf:// URL, or a volume mounted at
# /runs (the image's folder there gives a new named volume this user as its owner).
RUN groupadd --gid 10001 anima \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin anima \
    && mkdir -p /cache /runs /work \
    && chown anima:anima /cache /runs /work
ENV ANIMA_LORA_CACHE=/cache \
    HF_HOME=/cache/huggingface \
    PREFECT_HOME=/cache/prefect
VOLUME ["/cache"]

USER anima
WORKDIR /work
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/anima-lora-entrypoint"]
CMD ["--help"]
