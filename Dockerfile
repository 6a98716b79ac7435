# `docker build -t yoso-server .`: the yoso server with yolov3-tiny and yolov4-tiny baked in.
# The wheels (opencv-python-headless, openvino, numpy, pillow, pydantic-core) bundle their native libraries; what
# they still load from the system (glibc, libstdc++, libgcc, zlib) is in the slim base, so no apt-get.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOSO_MODEL_DIR=/models \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /build

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --requirement requirements.txt

# yoso is installed into site-packages and its source removed: `python -m` puts the working directory
# first on sys.path, so a source tree there would shadow the installed copy (and its package data).
COPY pyproject.toml README.md ./
COPY yoso ./yoso
COPY yosoclient ./yosoclient
RUN pip install --no-deps . && rm -rf /build

# Empty: the working directory is where yoso reads an optional .env file (mount one at /app/.env).
WORKDIR /app

# What `make models` runs: every file is checked against its published sha256, so a missing or corrupt
# model fails the build instead of the first request.
RUN python -m yoso models pull yolov3-tiny yolov4-tiny

# /models is the model repository: the server writes there the versions it pulls from a registry.
RUN groupadd --system --gid 10001 yoso \
    && useradd --system --uid 10001 --gid yoso --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin yoso \
    && chown -R yoso:yoso /models
USER 10001:10001

EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", \
         "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('YOSO_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["python", "-m", "yoso.server"]
