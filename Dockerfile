# The Shoal agent as a container image: shoal-agent (and the shoal CLI) on a slim
# Python base, with tini as PID 1.
#
# One Dockerfile for every platform; nothing in it names an architecture:
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 \
#       -t registry.example.com/shoal-agent:0.1.0 --push .
#
# Run it with the Docker socket mounted, a volume for its state and its settings
# in the environment (docs/deploy-agents.md):
#
#   docker run -d --name shoal-agent --restart unless-stopped \
#       -v /var/run/docker.sock:/var/run/docker.sock -v shoal-state:/var/lib/shoal \
#       -v /etc/shoal:/etc/shoal:ro -e NATS_URL=nats://hub:4222 \
#       -e SHOAL_TRUST=/etc/shoal/trust.toml -e NATS_NKEY=/etc/shoal/agent.nk \
#       registry.example.com/shoal-agent:0.1.0
#
# Build arguments:
#   BASE_IMAGE           any Debian-based image with Python 3.11 or newer as python3,
#                        its venv module (with ensurepip) and a shell: the official
#                        python slim images, or Debian itself with the python3-venv
#                        package. tini comes from apt-get when the base lacks it
#                        (from apk on an Alpine-based one, which is not tested)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL
#                        another package index (a mirror, or one with wheels for
#                        platforms the default index lacks)
#   PIP_NO_INDEX, PIP_FIND_LINKS
#                        no package index at all: every package from a wheelhouse
#
# Building offline, from a local base image and a wheelhouse made beforehand on a
# machine with the base image's Python version and platform. The wheelhouse holds
# the project and its dependencies (uvloop optional: without it the agent runs on
# asyncio's loop) and what builds the project's wheel (setuptools, wheel). It stays
# out of the build context: serve it on this machine's loopback for the build.
#
#   pip wheel '.[uvloop]' 'setuptools>=68' wheel --wheel-dir /tmp/wheels
#   python3 -m http.server --directory /tmp/wheels --bind 127.0.0.1 8000 &
#   docker build --network host --build-arg BASE_IMAGE=my-python:3.11 \
#       --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/ \
#       -t shoal-agent:0.1.0 .

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- build
# The project's wheel and every dependency, installed into a virtual environment
# that the final stage copies. The base image has no compiler, and needs none:
# every dependency has a wheel on linux/amd64, linux/arm64 and linux/arm/v7 (nkeys
# is a pure-Python source package). On linux/arm/v7 the uvloop extra installs
# nothing (the agent runs on asyncio's own loop) and ed25519 comes from the
# pure-Python ecdsa package instead of PyNaCl (docs/install.md). Should some
# platform ever lack a wheel, it tries again without uvloop, and if that is not
# enough either, it builds just those dependencies here, with a compiler that
# never reaches the final image.
FROM ${BASE_IMAGE} AS build

ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol/ protocol/
COPY agent/ agent/
COPY controller/ controller/
COPY shoal/ shoal/

RUN set -eux; \
    python3 -m venv /opt/shoal; \
    pip=/opt/shoal/bin/pip; \
    "$pip" wheel --no-deps --wheel-dir /wheels .; \
    wheel="$(ls /wheels/shoal-*.whl)"; \
    if ! "$pip" install --prefer-binary "${wheel}[uvloop]"; then \
        echo "uvloop or another dependency has no wheel here; trying without uvloop"; \
        if ! "$pip" install --prefer-binary "$wheel"; then \
            echo "some dependencies have no wheel for this platform: building them here"; \
            if command -v apt-get >/dev/null 2>&1; then \
                apt-get update; \
                apt-get install -y --no-install-recommends gcc libc6-dev libffi-dev make; \
            elif command -v apk >/dev/null 2>&1; then \
                apk add --no-cache gcc musl-dev libffi-dev make; \
            fi; \
            "$pip" install --prefer-binary "$wheel"; \
        fi; \
    fi; \
    "$pip" uninstall -y pip setuptools >/dev/null 2>&1 || true; \
    /opt/shoal/bin/shoal-agent --version

# --------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="shoal-agent" \
      org.opencontainers.image.description="Shoal agent: serves this host's Docker engine to the fleet over NATS" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini as PID 1: it forwards docker stop's SIGTERM to the agent and reaps zombies.
# A user for running without root (see "Running without root" in
# docs/deploy-agents.md); the image itself runs as root, because the Docker
# socket usually belongs to root and the docker group.
RUN set -eux; \
    if ! command -v tini >/dev/null 2>&1; then \
        if command -v apt-get >/dev/null 2>&1; then \
            apt-get update; \
            apt-get install -y --no-install-recommends tini; \
            rm -rf /var/lib/apt/lists/*; \
        elif command -v apk >/dev/null 2>&1; then \
            apk add --no-cache tini; \
        else \
            echo "the base image has no tini, and neither apt-get nor apk to install it" >&2; \
            exit 1; \
        fi; \
    fi; \
    tini --version; \
    grep -q '^shoal:' /etc/group || echo 'shoal:x:10001:' >> /etc/group; \
    grep -q '^shoal:' /etc/passwd \
        || echo 'shoal:x:10001:10001:Shoal agent:/var/lib/shoal:/sbin/nologin' >> /etc/passwd; \
    mkdir -p /var/lib/shoal /etc/shoal; \
    chown 10001:10001 /var/lib/shoal

COPY --from=build /opt/shoal /opt/shoal

# SHOAL_STATE_DIR: the request journal (per host id) lives in the volume, so it
# survives a new container. SHOAL_HEALTH_FILE: what the HEALTHCHECK reads.
# SHOAL_SHUTDOWN_GRACE: docker stop waits 10 s before SIGKILL by default; the agent
# finishes its requests within 8. Raise both together (docker run --stop-timeout,
# compose stop_grace_period) for long deploys.
ENV PATH="/opt/shoal/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHOAL_STATE_DIR=/var/lib/shoal \
    SHOAL_HEALTH_FILE=/var/lib/shoal/health.json \
    SHOAL_SHUTDOWN_GRACE=8

VOLUME /var/lib/shoal
WORKDIR /var/lib/shoal

# Healthy while the agent is connected to NATS and heartbeating: it rewrites the
# health file on every heartbeat (5 s by default) and --check-health fails when
# the agent is not connected or the file is older than three heartbeats.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["shoal-agent", "--check-health"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "shoal-agent"]
CMD []
