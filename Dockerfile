# syntax=docker/dockerfile:1
# comfyui-gateway container image: two stages on python:3.12-slim.
#
#   docker build -t comfyui-gateway .
#   docker run -p 8190:8190 -e COMFYUI_GATEWAY_ADMIN_TOKEN=change-me \
#              -v comfyui-gateway-config:/config comfyui-gateway
#
# /config is a volume holding gateway.yaml. It must stay writable by UID 10001: admin changes
# are saved there (atomically, with a gateway.yaml.bak backup beside it). A new named volume
# starts with the example configuration shipped in the image. Listening on 0.0.0.0 (the CMD)
# requires an admin token: set COMFYUI_GATEWAY_ADMIN_TOKEN (never written to the file).
# See deploy/README.md.

ARG PYTHON_IMAGE=python:3.12-slim

# -- build: install the package and its dependencies into a virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# [speed] adds uvloop and orjson, used automatically when present. DL3013 (pin versions) does not apply:
# this installs the project itself; its dependencies' bounds live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[speed]"

# -- runtime: the virtualenv, a non-root user, the config volume --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="comfyui-gateway" \
      org.opencontainers.image.description="One ComfyUI-compatible URL in front of many ComfyUI servers" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin gateway \
 && mkdir /config \
 && chown 10001:10001 /config
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 config/gateway.yaml /config/gateway.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COMFYUI_GATEWAY_CONFIG=/config/gateway.yaml
VOLUME ["/config"]
USER 10001:10001
WORKDIR /config
EXPOSE 8190
# slim has no curl: probe with the interpreter. /gateway/healthz answers 200 while the process
# serves (it does not depend on the ComfyUI servers; /gateway/readyz does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8190/gateway/healthz', timeout=3)"]
# aiohttp turns SIGTERM into a graceful stop: websockets closed with 1001, in-flight requests
# drained for up to 10 s. Give `docker stop` more than that: docker stop -t 20.
STOPSIGNAL SIGTERM
ENTRYPOINT ["comfyui-gateway"]
CMD ["--config", "/config/gateway.yaml", "--host", "0.0.0.0"]
