# nnunet-warmer for a GPU node pool. Its torch, CUDA and Python must be the training image's, or every cache key
# differs: build it FROM your training image when you have one, keeping that image's torch,
#   docker build --build-arg BASE=your/training-image:tag --build-arg TORCH= -t nnunet-warmer .
# The default is a standalone image on python:3.11-slim with the torch this project pins. docs/image.md says how it
# is built and tested, and what its size is made of.
ARG BASE=python:3.11-slim
FROM ${BASE}
USER root
# The C/C++ compiler stays in the image: compiling is this image's work (inductor builds its CPU kernels with it,
# Triton builds its GPU launcher with it), and a node without one is refused by the compile canary.
RUN if ! command -v g++ >/dev/null; then apt-get update && apt-get install -y --no-install-recommends gcc g++ \
        && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /opt/nnunet-warmer
COPY pyproject.toml README.md ./
COPY warmer ./warmer
# Empty (--build-arg TORCH=) keeps the torch the base image has.
ARG TORCH="torch==2.14.1 torchvision==0.29.1"
RUN pip install --no-cache-dir ${TORCH} ".[metrics]"
# Jobs run as this user (uid 10001, group 10001); `--user UID:GID` runs them as the cluster user instead. HOME is
# /tmp so that any user has one.
RUN groupadd --gid 10001 warmer && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp warmer
ENV NNUNET_WARMER_CACHE_DIR=/cache nnUNet_preprocessed=/data/nnUNet_preprocessed nnUNet_results=/tmp/nnUNet_results \
    HOME=/tmp WARMER_METRICS_PORT=9464
# An image that starts warm without shared storage: put a bundle (`nnunet-warmer export --to FILE`, run with this
# image on a node of the GPU type it will run on) into the build context and build with
#   docker build --build-arg WARMER_BUNDLE=FILE .
# The import checks every byte and refuses a bundle verified under other software, failing the build; it writes the
# targets into /cache, owned by root and read by the job's user through a node-local copy (do not mount over /cache
# then). Without the argument nothing is imported.
ARG WARMER_BUNDLE=""
COPY ${WARMER_BUNDLE:-pyproject.toml} /tmp/warmer-bundle
RUN if [ -n "$WARMER_BUNDLE" ]; then nnunet-warmer import /tmp/warmer-bundle --cache-dir /cache; fi \
    && rm -f /tmp/warmer-bundle
USER 10001:10001
ENTRYPOINT ["nnunet-warmer"]
# The command for a GPU node pool: keep this node's targets warm, metrics on :9464. Mount the shared cache at /cache
# and nnUNet_preprocessed at /data/nnUNet_preprocessed; any other command (warm, status, run, submit) replaces it.
CMD ["watch", "--metrics-port", "9464", "--metrics-address", "0.0.0.0"]
EXPOSE 9464
# Healthy while the metrics answer: the default `watch` serves them. Docker and podman run it (build with podman's
# --format docker, since the OCI format has no HEALTHCHECK).
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s --retries=3 CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('WARMER_METRICS_PORT', '9464')}/metrics\", timeout=5)"]
