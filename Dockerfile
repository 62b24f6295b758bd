# nnunet-warmer on a GPU node: the image must match the training image's torch, CUDA and Python exactly,
# or every cache key differs. Build FROM your training image when you have one; this is the standalone default.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/nnunet-warmer
COPY pyproject.toml README.md ./
COPY warmer ./warmer
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 ".[metrics]"
ENV NNUNET_WARMER_CACHE_DIR=/cache nnUNet_preprocessed=/data/nnUNet_preprocessed nnUNet_results=/tmp/nnUNet_results
# An image that starts warm without shared storage: put a bundle (`nnunet-warmer export --to FILE`, run on a node of
# the GPU type this image will run on, with this image's torch) into the build context and build with
#   docker build --build-arg WARMER_BUNDLE=FILE .
# The import checks every byte and refuses a bundle verified under other software, failing the build; it writes the
# targets into /cache (do not mount over /cache then). Without the argument nothing is imported.
ARG WARMER_BUNDLE=""
COPY ${WARMER_BUNDLE:-pyproject.toml} /tmp/warmer-bundle
RUN if [ -n "$WARMER_BUNDLE" ]; then nnunet-warmer import /tmp/warmer-bundle --cache-dir /cache; fi \
    && rm -f /tmp/warmer-bundle
ENTRYPOINT ["nnunet-warmer"]
# The command for a GPU node pool: keep this node's targets warm, metrics on :9464. Mount the shared cache at /cache
# and nnUNet_preprocessed at /data/nnUNet_preprocessed; any other command (warm, status, submit) replaces it.
CMD ["watch", "--metrics-port", "9464", "--metrics-address", "0.0.0.0"]
EXPOSE 9464
