# nnunet-warmer on a GPU node: the image must match the training image's torch, CUDA and Python exactly,
# or every cache key differs. Build FROM your training image when you have one; this is the standalone default.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/nnunet-warmer
COPY pyproject.toml README.md ./
COPY warmer ./warmer
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 .
ENV NNUNET_WARMER_CACHE_DIR=/cache
ENTRYPOINT ["nnunet-warmer"]
CMD ["--help"]
