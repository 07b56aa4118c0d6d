# syntax=docker/dockerfile:1.7
# Subgate's image: one build, two targets (`auth` and `gateway`, the default).
#   docker build -t subgate-gateway .            docker build --target auth -t subgate-auth .
# Runtime dependencies only (pinned by requirements.lock), a non-root user, Apple's root
# certificates pinned by SHA-256, and a health check per service.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the runtime dependencies, nothing else -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# The [project] dependencies of pyproject.toml (not the dev extras), at the versions
# requirements.lock pins.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('runtime.txt', 'w').write('\n'.join(deps) + '\n')" \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements.lock -r runtime.txt

# --- runtime -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APPLE_ROOT_CERTS_DIR=/app/certs \
    GATEWAY_HOST=0.0.0.0 \
    AUTH_HOST=0.0.0.0 \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 subgate \
    && useradd --system --uid 10001 --gid subgate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin subgate
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Apple's roots from apple.com, each pinned by its SHA-256 fingerprint: a different file
# fails the build. (The same fingerprints as scripts/fetch_apple_certs.sh checks.)
ADD --chmod=644 --checksum=sha256:63343abfb89a6a03ebb57e9b3f5fa7be7c4f5c756f3017b3a8c488c3653e9179 \
    https://www.apple.com/certificateauthority/AppleRootCA-G3.cer certs/AppleRootCA-G3.cer
ADD --chmod=644 --checksum=sha256:c2b9b042dd57830e7d117dac55ac8ae19407d38e41d88f3215bc3a890444a050 \
    https://www.apple.com/certificateauthority/AppleRootCA-G2.cer certs/AppleRootCA-G2.cer
ADD --chmod=644 --checksum=sha256:b0b1730ecbc7ff4505142c49f1295e6eda6bcaed7e2c68c5be91b5a11001f024 \
    https://www.apple.com/certificateauthority/AppleIncRootCertificate.cer certs/AppleIncRootCertificate.cer
COPY shared/ shared/
COPY auth_service/ auth_service/
COPY gateway_service/ gateway_service/
COPY docker/healthcheck.py docker/healthcheck.py
USER 10001:10001
# SIGTERM drains: not ready at once, in-flight requests and streams finish (up to
# SHUTDOWN_TIMEOUT_SECONDS), then the process exits. Give it that long to stop.
STOPSIGNAL SIGTERM

# --- auth ----------------------------------------------------------------------------
FROM runtime AS auth
EXPOSE 8081 9091
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "auth"]
CMD ["python", "-m", "auth_service"]

# --- gateway (the default target) ----------------------------------------------------
FROM runtime AS gateway
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "gateway"]
CMD ["python", "-m", "gateway_service"]
