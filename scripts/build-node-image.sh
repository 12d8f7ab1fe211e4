#!/usr/bin/env bash
# Builds the MAO node image from the Dockerfile at the repository root, for docker-compose.yml,
# and, on a Debian base of this host's release (mao-base:bookworm), the Redis and etcd images that
# docker-compose.yml uses by default (images/redis, images/etcd: Debian's redis-server and
# etcd-server installed on the base, so the compose stack needs no registry).
# The image installs nothing from an index: its build context carries
#   var/wheels  the wheels of requirements.txt, of pip, of the project's build backend (setuptools)
#               and of the project, resolved and built on this host by MAO_WHEEL_PYTHON, whose
#               version must equal the base image's python3 (the same Python evaluates markers such
#               as python_full_version < '3.11.3' the same way);
#   var/debs    when the base is Debian of this host's release and has no git: git's and
#               ca-certificates' packages with what they need that the base lacks (apt on this host
#               resolves them against the base's own dpkg status);
#   var/service-debs/redis, var/service-debs/etcd   likewise redis-server's and etcd-server's
#               packages with what the base lacks, for the Redis and etcd images.
#
# Usage: scripts/build-node-image.sh [--fetch | --offline]
#   (no flag)  fetch what is missing or stale (docker pull of an absent base too), then build;
#   --fetch    only fetch: the one step that needs the network (scripts/setup.sh runs it for
#              mao-base:bookworm). Skipped while var/wheels/.fetched matches the base image, the
#              wheel Python, requirements.txt and pyproject.toml's build and runtime requirements;
#   --offline  only build, from var/wheels and var/debs, with no network at all (the tests use it).
# The build step makes the project's own wheel afresh (offline, with the fetched setuptools) and
# runs docker build with no network. Only a base without git from another release needs one:
# the Dockerfile then installs git with apt-get inside the build, which --offline refuses.
#
# Environment: MAO_BASE_IMAGE (default python:3.12-slim; scripts/setup.sh builds mao-base:bookworm),
# MAO_NODE_IMAGE (default mao-node:latest), MAO_WHEEL_PYTHON (default /usr/bin/python3),
# MAO_REDIS_IMAGE, MAO_ETCD_IMAGE (the tags of the Redis and etcd images: default
# mao-redis:latest and mao-etcd:latest, docker-compose.yml's defaults).
# Output of the fetch (pip, apt) goes to var/log/node-image-fetch.log, that of the
# build (pip, docker build) to var/log/node-image.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE_IMAGE=${MAO_BASE_IMAGE:-python:3.12-slim}
NODE_IMAGE=${MAO_NODE_IMAGE:-mao-node:latest}
REDIS_IMAGE=${MAO_REDIS_IMAGE:-mao-redis:latest}
ETCD_IMAGE=${MAO_ETCD_IMAGE:-mao-etcd:latest}
WHEEL_PYTHON=${MAO_WHEEL_PYTHON:-/usr/bin/python3}
VAR=$PWD/var
WHEELS=$VAR/wheels
DEBS=$VAR/debs
STAMP=$WHEELS/.fetched
SERVICE_DEBS=$VAR/service-debs
SERVICE_STAMP=$SERVICE_DEBS/.fetched
LOG=$VAR/log/node-image.log
FETCH_LOG=$VAR/log/node-image-fetch.log

LOG_TAG=node-image
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
SOURCE_COPY=
trap '[[ -z $SOURCE_COPY ]] || rm -rf "$SOURCE_COPY"' EXIT

case "$#:${1:-}" in
  0:) mode=all ;;
  1:--fetch) mode=fetch ;;
  1:--offline) mode=offline ;;
  *) die "usage: scripts/build-node-image.sh [--fetch | --offline]" ;;
esac

base_id() { docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null; }

# in_base CMD...: runs CMD in a throwaway container of the base image, with no network.
in_base() { docker run --rm --network none "$BASE_IMAGE" "$@"; }

# pip_from_wheel ARGS...: runs the fetched pip wheel with MAO_WHEEL_PYTHON.
pip_from_wheel() {
  local pip_wheel=("$WHEELS"/pip-*.whl)
  "$WHEEL_PYTHON" "${pip_wheel[0]}/pip" "$@"
}

# Sets base_python, base_release and base_git (git or no-git) from a container of the base.
read_base_facts() {
  local facts
  # shellcheck disable=SC2016 # expanded by the container's shell
  facts=$(in_base sh -c 'python3 -c "import platform; print(platform.python_version())"
    . /etc/os-release; echo "${VERSION_CODENAME:-none}"
    if command -v git >/dev/null; then echo git; else echo no-git; fi') ||
    die "cannot run python3 in $BASE_IMAGE; is it a Python image?"
  { read -r base_python && read -r base_release && read -r base_git; } <<<"$facts"
}

mkdir -p "$VAR/log"
[[ -x .venv/bin/python ]] || die "no .venv; run scripts/setup.sh first"
[[ -x $WHEEL_PYTHON ]] || die "MAO_WHEEL_PYTHON=$WHEEL_PYTHON is not an executable"
if [[ $mode != offline ]] && ! base_id >/dev/null; then
  say "fetch: docker pull $BASE_IMAGE"
  docker pull -q "$BASE_IMAGE" >/dev/null || die "docker pull $BASE_IMAGE failed"
fi
base_id=$(base_id) ||
  die "no image $BASE_IMAGE here (docker image ls); scripts/setup.sh builds mao-base:bookworm"
# shellcheck disable=SC1091 # the host's own release file
host_release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
# The build backend's requirements and the static runtime ones, from pyproject.toml.
pyproject_requires=$(.venv/bin/python -c 'import tomllib
with open("pyproject.toml", "rb") as f:
    p = tomllib.load(f)
print(*p["build-system"]["requires"], *p["project"].get("dependencies", []), sep="\n")')
# download_debs DIR PACKAGE...: the PACKAGEs and what the base lacks of their dependencies into
# DIR (apt on this host resolves them against the base's dpkg status, DIR/status).
download_debs() {
  local dir=$1
  shift
  apt-get -q -y --download-only --no-install-recommends -o Dir::State::status="$dir/status" \
    -o Dir::Cache::archives="$dir" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    install "$@" >>"$FETCH_LOG" 2>&1
}

# fetch_debs DIR WHAT PACKAGE...: download_debs into DIR with the base's dpkg status; WHAT names
# the packages in the error. A fresh machine may have no (or stale) package lists: they are
# updated once if the first try fails.
fetch_debs() {
  local dir=$1 what=$2
  shift 2
  mkdir -p "$dir/partial"
  in_base cat /var/lib/dpkg/status >"$dir/status"
  download_debs "$dir" "$@" ||
    { apt-get -q update >>"$FETCH_LOG" 2>&1 && download_debs "$dir" "$@"; } ||
    die "apt-get could not download $what for $BASE_IMAGE; see $FETCH_LOG"
  rm -rf "$dir/partial" "$dir/status" "$dir"/lock*
}

# fetch_service_debs: var/service-debs/{redis,etcd} for a Debian base of this host's release
# (skipped while var/service-debs/.fetched names this base image).
fetch_service_debs() {
  if [[ -f $SERVICE_STAMP && $(<"$SERVICE_STAMP") == "$base_id" ]]; then
    say "fetch: var/service-debs up to date for $BASE_IMAGE"
    return
  fi
  [[ -n ${base_release:-} ]] || read_base_facts
  if [[ $base_release != "$host_release" ]]; then
    say "fetch: $BASE_IMAGE is not Debian $host_release: no local Redis and etcd images"
    return
  fi
  say "fetch: redis-server and etcd-server for $BASE_IMAGE into var/service-debs"
  rm -rf "$SERVICE_DEBS"
  local service
  for service in redis etcd; do
    fetch_debs "$SERVICE_DEBS/$service" "$service-server" "$service-server"
  done
  echo "$base_id" >"$SERVICE_STAMP"
}

# build_service_images: the Redis and etcd images from var/service-debs, when fetched for this base.
build_service_images() {
  if [[ ! -f $SERVICE_STAMP || $(<"$SERVICE_STAMP") != "$base_id" ]]; then
    say "no var/service-debs for $BASE_IMAGE: no local Redis and etcd images" \
      "(set MAO_REDIS_IMAGE and MAO_ETCD_IMAGE for docker-compose)"
    return
  fi
  local service tag
  for service in redis etcd; do
    tag=$([[ $service == redis ]] && echo "$REDIS_IMAGE" || echo "$ETCD_IMAGE")
    say "image $tag: docker build images/$service from $BASE_IMAGE (network: none)"
    docker build --network none --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$tag" \
      -f "images/$service/Dockerfile" "$SERVICE_DEBS/$service" >>"$LOG" 2>&1 ||
      die "docker build of $tag failed; see $LOG"
  done
}

# What var/wheels and var/debs are fetched for; the fetch writes it to $STAMP when it succeeds.
fetch_key=$({ echo "$base_id" && "$WHEEL_PYTHON" -V && cat requirements.txt &&
  echo "$pyproject_requires"; } | sha256sum | cut -d' ' -f1)

fetched() { [[ -f $STAMP && $(<"$STAMP") == "$fetch_key" ]]; }

fetch() {
  if fetched; then
    say "fetch: var/wheels and var/debs up to date for $BASE_IMAGE"
    return
  fi
  read_base_facts
  local wheel_python
  wheel_python=$("$WHEEL_PYTHON" -c 'import platform; print(platform.python_version())')
  [[ $wheel_python == "$base_python" ]] ||
    die "$BASE_IMAGE has Python $base_python but MAO_WHEEL_PYTHON=$WHEEL_PYTHON is $wheel_python;" \
      "set MAO_WHEEL_PYTHON to a Python $base_python"

  say "fetch: wheels of requirements.txt, pip and setuptools (Python $wheel_python) into var/wheels"
  rm -rf "$WHEELS" "$DEBS"
  mkdir -p "$WHEELS" "$DEBS"
  : >"$FETCH_LOG"
  local requires
  mapfile -t requires <<<"$pyproject_requires"
  { .venv/bin/python -m pip download -q --no-deps -d "$WHEELS" pip &&
    pip_from_wheel wheel -q -w "$WHEELS" -r requirements.txt "${requires[@]}"; } \
    >>"$FETCH_LOG" 2>&1 || die "pip download or pip wheel failed; see $FETCH_LOG"

  if [[ $base_git == no-git && $base_release == "$host_release" ]]; then
    say "fetch: git for $BASE_IMAGE (Debian $base_release, no git) into var/debs"
    fetch_debs "$DEBS" git git ca-certificates
  fi
  echo "$fetch_key" >"$STAMP"
}

build() {
  [[ -n ${base_git:-} ]] || read_base_facts
  local network=none
  if [[ $base_git == no-git && $base_release == "$host_release" ]]; then
    compgen -G "$DEBS/git_*.deb" >/dev/null ||
      die "var/debs has no git packages for $BASE_IMAGE; run scripts/setup.sh"
  elif [[ $base_git == no-git && $mode == offline ]]; then
    die "$BASE_IMAGE has no git and is not Debian $host_release: git needs apt-get with network;" \
      "build without --offline"
  elif [[ $base_git == no-git ]]; then
    network=default
    say "$BASE_IMAGE has no git and is not Debian $host_release: apt-get in the build installs it"
  fi

  say "wheel: the project into var/wheels (no index)"
  : >"$LOG"
  # Built from a copy of the package's sources, so setuptools writes its build/ and egg-info
  # there, never into the checkout (where a stale build/ would put deleted modules in the wheel).
  SOURCE_COPY=$(mktemp -d)
  cp -r pyproject.toml requirements.txt README.md cli.py beat_schedule.py mao_celery "$SOURCE_COPY"/
  find "$SOURCE_COPY" -name __pycache__ -prune -exec rm -rf {} +
  rm -f "$WHEELS"/mao_orchestrator-*.whl
  pip_from_wheel wheel -q --no-deps --no-index --find-links "$WHEELS" -w "$WHEELS" "$SOURCE_COPY" \
    >>"$LOG" 2>&1 || die "pip wheel of the project failed; see $LOG"

  say "image $NODE_IMAGE: docker build from $BASE_IMAGE (network: $network)"
  docker build --network "$network" --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$NODE_IMAGE" . \
    >>"$LOG" 2>&1 || die "docker build of $NODE_IMAGE failed; see $LOG"
  say "ready: $NODE_IMAGE"
}

if [[ $mode == offline ]]; then
  fetched || die "var/wheels and var/debs: not fetched for $BASE_IMAGE, this Python and these" \
    "requirements; run scripts/setup.sh (or scripts/build-node-image.sh --fetch for that base)"
else
  fetch
fi
[[ $mode == offline ]] || fetch_service_debs
[[ $mode == fetch ]] || { build && build_service_images; }
