# fleetgate's image: the gateway (`fleetgate run`, the default command) and the simulator
# (`fleetgate sim ...`), as used by docker-compose.yml.
#
# Pinned to a specific patch release on Debian bookworm instead of the moving 3.11-slim tag:
# rebuilding the image months later then gets the same Python (the one the test suite ran
# on is bookworm's 3.11). Bump it deliberately.
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

# Build stage: a wheel of fleetgate and of every dependency, so the runtime stage installs
# offline and carries neither the source tree nor the build backend (hatchling).
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Exactly what the wheel is built from (pyproject.toml: the three packages, migrations
# force-included as gateway/buffer/_migrations, README.md as the long description). devstack/
# (the dev-only process stack for the demo and the tests), tests/ and bench/ are neither copied
# nor in the build context (.dockerignore): the image is the product alone, like the wheel
# (tests/e2e/test_wheel.py).
COPY pyproject.toml README.md ./
COPY device_protocol/ device_protocol/
COPY gateway/ gateway/
COPY firmware_sim/ firmware_sim/
COPY sdk/python/fleetgate_device/ sdk/python/fleetgate_device/
COPY migrations/ migrations/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Log lines (and the simulator's progress on stdout) reach `docker logs` as they are written.
ENV PYTHONUNBUFFERED=1 \
    FLEETGATE_DATA_DIR=/var/lib/fleetgate
# Plain COPY, no BuildKit-only RUN --mount: docker-compose 1.29 builds with the classic builder.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Not root: the gateway needs nothing but its data dir. The directory is created here owned by
# the user, so a named volume mounted on it starts with that owner (Docker copies it).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fleetgate --no-create-home \
        --shell /usr/sbin/nologin fleetgate \
    && mkdir -p /var/lib/fleetgate \
    && chown fleetgate:fleetgate /var/lib/fleetgate
USER fleetgate
WORKDIR /var/lib/fleetgate
# No VOLUME instruction: the simulator would get a useless anonymous volume on every run;
# docker-compose.yml mounts a named volume on the gateway's data dir.
EXPOSE 8080
# No HEALTHCHECK here: the simulator runs from this image too and serves no HTTP. The gateway's
# is in docker-compose.yml.
CMD ["fleetgate", "run"]
