#!/usr/bin/env bash
# Sets up one MAO node on this machine: Debian packages, the venv, Redis, a single-node etcd, a Docker
# daemon, the two local images (design.md §1 and §6) and the wheels and Debian packages the node
# image is built from offline (scripts/build-node-image.sh --fetch). Idempotent: whatever already
# answers is left alone. What this script starts is recorded in var/run/*.pid, and scripts/stop.sh stops only that.
#
# Environment: MAO_REDIS_PORT (default 6379), MAO_ETCD_PORT (default 2379),
# MAO_ETCD_PEER_PORT (default 2380), MAO_VENV_PYTHON (the interpreter of .venv; default
# /usr/bin/python3, Debian's build with PGO and LTO, the one the node image runs: an interpreter
# built without them, as pyenv builds by default, starts every maoctl command about 25 % slower,
# see bench/README.md). Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VAR=$PWD/var
REDIS_PORT=${MAO_REDIS_PORT:-6379}
VENV_PYTHON=${MAO_VENV_PYTHON:-/usr/bin/python3}
ETCD_PORT=${MAO_ETCD_PORT:-2379}
ETCD_PEER_PORT=${MAO_ETCD_PEER_PORT:-2380}
PACKAGES=(python3-venv redis-server etcd-server etcd-client docker.io docker-compose git debootstrap busybox-static)
BASE_IMAGE=mao-base:bookworm
BUSYBOX_IMAGE=mao-busybox:latest
TEMP_DIRS=()

LOG_TAG=setup
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# wait_until SECONDS CMD...: succeeds as soon as CMD does; fails once SECONDS have passed.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# start_service NAME CMD...: start_detached with var/run/NAME.pid and var/log/NAME.log.
start_service() {
  local name=$1
  shift
  start_detached "$VAR/run/$name.pid" "$VAR/log/$name.log" "$@"
}

# remove_tree DIR: unmounts whatever a failed debootstrap left mounted under DIR, then deletes DIR.
remove_tree() {
  local dir=$1 mountpoint
  [[ -d $dir ]] || return 0
  awk -v prefix="$dir/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mountpoint; do umount -l "$mountpoint"; done
  rm -rf --one-file-system "$dir"
}
remove_temp_dirs() {
  local dir
  for dir in "${TEMP_DIRS[@]}"; do remove_tree "$dir"; done
}
trap remove_temp_dirs EXIT

mkdir -p "$VAR/run" "$VAR/log" "$VAR/redis"

install_packages() {
  local package missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then
    say "packages: all present"
    return
  fi
  say "packages: installing ${missing[*]} (log var/log/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update && apt-get install -y "${missing[@]}"; } >"$VAR/log/apt.log" 2>&1 ||
    die "apt-get failed; see $VAR/log/apt.log"
}

install_venv() {
  local stamp=$VAR/.venv-stamp interpreter current
  interpreter=$(readlink -f "$(command -v "$VENV_PYTHON")") ||
    die "MAO_VENV_PYTHON: no interpreter $VENV_PYTHON (name an installed python3.11 or unset it)"
  current=$(readlink -e .venv/bin/python) || current=$interpreter
  if [[ $current != "$interpreter" ]]; then
    say "venv: rebuilding .venv on $interpreter (it was on $current)"
    rm -rf .venv
  fi
  if [[ ! -x .venv/bin/python ]]; then
    "$interpreter" -m venv .venv
    rm -f "$stamp"
  fi
  if [[ -f $stamp && -z $(find requirements*.txt pyproject.toml -newer "$stamp") ]]; then
    say "venv: up to date (.venv)"
    return
  fi
  say "venv: installing requirements-dev.txt and the project into .venv (log var/log/pip.log)"
  { .venv/bin/pip install -q -r requirements-dev.txt && .venv/bin/pip install -q -e .; } \
    >"$VAR/log/pip.log" 2>&1 || die "pip install failed; see $VAR/log/pip.log"
  touch "$stamp"
}

redis_answers() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

start_redis() {
  if redis_answers; then
    say "redis: already answering on 127.0.0.1:$REDIS_PORT"
    return
  fi
  say "redis: starting on 127.0.0.1:$REDIS_PORT (log var/log/redis.log)"
  redis-server --daemonize yes --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
    --appendonly yes --dir "$VAR/redis" --pidfile "$VAR/run/redis.pid" \
    --logfile "$VAR/log/redis.log"
  wait_until 15 redis_answers ||
    die "redis did not answer within 15 s; see $VAR/log/redis.log"
}

etcd_healthy() {
  etcdctl --endpoints="127.0.0.1:$ETCD_PORT" --dial-timeout=1s --command-timeout=2s \
    endpoint health
}

start_etcd() {
  if etcd_healthy >/dev/null 2>&1; then
    say "etcd: already healthy on 127.0.0.1:$ETCD_PORT"
    return
  fi
  say "etcd: starting on 127.0.0.1:$ETCD_PORT, peer port $ETCD_PEER_PORT (log var/log/etcd.log)"
  local client_url=http://127.0.0.1:$ETCD_PORT peer_url=http://127.0.0.1:$ETCD_PEER_PORT
  start_service etcd etcd --name mao-node --data-dir "$VAR/etcd" \
    --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "mao-node=$peer_url"
  wait_until 30 etcd_healthy ||
    die "etcd did not become healthy within 30 s; see $VAR/log/etcd.log"
}

start_docker() {
  if docker info >/dev/null 2>&1; then
    say "docker: daemon already answering"
    return
  fi
  say "docker: starting dockerd on the unix socket (log var/log/dockerd.log)"
  start_service dockerd dockerd --host unix:///var/run/docker.sock
  wait_until 60 docker info ||
    die "dockerd did not answer within 60 s; see $VAR/log/dockerd.log"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build_base_image() {
  if image_exists "$BASE_IMAGE"; then
    say "image $BASE_IMAGE: present"
    return
  fi
  say "image $BASE_IMAGE: debootstrap bookworm + docker import, about a minute (log var/log/debootstrap.log)"
  local stale rootfs
  for stale in "$VAR"/rootfs.*; do remove_tree "$stale"; done
  rootfs=$(mktemp -d "$VAR/rootfs.XXXXXX")
  TEMP_DIRS+=("$rootfs")
  chmod 755 "$rootfs" # becomes the mode of / in the image
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs" \
    >"$VAR/log/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $VAR/log/debootstrap.log"
  if ! tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null; then
    docker image rm "$BASE_IMAGE" >/dev/null 2>&1 || true
    die "docker import of $BASE_IMAGE failed"
  fi
  remove_tree "$rootfs"
}

# The busybox image carries the hash of its Dockerfile, so an edited Dockerfile gets a rebuild.
build_busybox_image() {
  local dockerfile_sha built_sha context
  dockerfile_sha=$(sha256sum images/busybox/Dockerfile | cut -d' ' -f1)
  built_sha=$(docker image inspect -f '{{index .Config.Labels "mao.dockerfile-sha256"}}' \
    "$BUSYBOX_IMAGE" 2>/dev/null || true)
  if [[ $built_sha == "$dockerfile_sha" ]]; then
    say "image $BUSYBOX_IMAGE: present"
    return
  fi
  say "image $BUSYBOX_IMAGE: building from images/busybox (log var/log/busybox-build.log)"
  context=$(mktemp -d "$VAR/busybox-context.XXXXXX")
  TEMP_DIRS+=("$context")
  cp images/busybox/Dockerfile /bin/busybox "$context/"
  docker build --label "mao.dockerfile-sha256=$dockerfile_sha" -t "$BUSYBOX_IMAGE" "$context" \
    >"$VAR/log/busybox-build.log" 2>&1 ||
    die "docker build of $BUSYBOX_IMAGE failed; see $VAR/log/busybox-build.log"
  remove_tree "$context"
}

install_packages
install_venv
start_redis
start_etcd
start_docker
build_base_image
build_busybox_image
say "node image: var/wheels and var/debs for $BASE_IMAGE (scripts/build-node-image.sh --fetch)"
MAO_BASE_IMAGE=$BASE_IMAGE bash scripts/build-node-image.sh --fetch
say "ready: redis redis://127.0.0.1:$REDIS_PORT/0, etcd 127.0.0.1:$ETCD_PORT, docker OK," \
  "images $BASE_IMAGE $BUSYBOX_IMAGE"
