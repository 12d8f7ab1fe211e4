# The MAO node image: one image for the worker, beat and Flower services of docker-compose.yml.
# Build it with scripts/build-node-image.sh, which first puts in the build context what this file
# installs without an index: the wheels of requirements.txt, of the project and of pip (var/wheels)
# and, for a Debian base that lacks git, git's Debian packages (var/debs); then it runs
#   docker build --build-arg BASE_IMAGE=... -t mao-node:latest .
# The project lives in /opt/mao: worker.sh next to the venv .venv it expects.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS venv
COPY requirements.txt var/wheels/ /tmp/wheels/
# The base may have no pip nor ensurepip: pip runs from its own wheel, into a venv made without it.
RUN set -- /tmp/wheels/pip-*.whl \
 && python3 -m venv --without-pip /opt/mao/.venv \
 && /opt/mao/.venv/bin/python "$1/pip" install --no-cache-dir --no-index \
      --find-links /tmp/wheels -r /tmp/wheels/requirements.txt mao-orchestrator

FROM ${BASE_IMAGE}
COPY var/debs/ /tmp/debs/
# git for the data repositories (GitPython runs it); from var/debs when given, else from apt.
RUN if ls /tmp/debs/*.deb >/dev/null 2>&1; then dpkg -i /tmp/debs/*.deb; \
    elif ! command -v git >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rm -rf /tmp/debs \
 && git --version
COPY --from=venv /opt/mao/.venv /opt/mao/.venv
COPY worker.sh /opt/mao/worker.sh
COPY scripts/lib.sh /opt/mao/scripts/lib.sh
ENV PATH=/opt/mao/.venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /opt/mao
ENTRYPOINT ["bash", "/opt/mao/worker.sh"]
CMD ["worker"]
