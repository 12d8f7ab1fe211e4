#!/usr/bin/env bash
# Builds the MAO node image from the Dockerfile at the repository root, for docker-compose.yml.
# The image installs nothing from an index: this script first puts in the build context
#   var/wheels  the wheels of requirements.txt, of the project and of pip, resolved and built on this
#               host by MAO_WHEEL_PYTHON, whose version must equal the base image's python3 (the same
#               Python evaluates markers such as python_full_version < '3.11.3' the same way);
#   var/debs    when the base is Debian of this host's release and has no git: git's and
#               ca-certificates' packages with what they need that the base lacks (apt on this host
#               resolves them against the base's own dpkg status).
# The build then runs with no network. Only a base without git from another release needs one:
# the Dockerfile then installs git with apt-get inside the build.
#
# Environment: MAO_BASE_IMAGE (default python:3.12-slim; scripts/setup.sh builds mao-base:bookworm),
# MAO_NODE_IMAGE (default mao-node:latest), MAO_WHEEL_PYTHON (default /usr/bin/python3).
# Output of pip, apt and docker build goes to var/log/node-image.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE_IMAGE=${MAO_BASE_IMAGE:-python:3.12-slim}
NODE_IMAGE=${MAO_NODE_IMAGE:-mao-node:latest}
WHEEL_PYTHON=${MAO_WHEEL_PYTHON:-/usr/bin/python3}
VAR=$PWD/var
WHEELS=$VAR/wheels
DEBS=$VAR/debs
LOG=$VAR/log/node-image.log

say() { printf '[node-image] %s\n' "$*"; }
die() {
  printf '[node-image] ERROR: %s\n' "$*" >&2
  exit 1
}

# in_base CMD...: runs CMD in a throwaway container of the base image, with no network.
in_base() { docker run --rm --network none "$BASE_IMAGE" "$@"; }

mkdir -p "$VAR/log"
: >"$LOG"
[[ -x .venv/bin/python ]] || die "no .venv; run scripts/setup.sh first"
[[ -x $WHEEL_PYTHON ]] || die "MAO_WHEEL_PYTHON=$WHEEL_PYTHON is not an executable"

# The base's Python version, Debian release and whether it has git, one per line.
# shellcheck disable=SC2016 # expanded by the container's shell
base_facts=$(in_base sh -c 'python3 -c "import platform; print(platform.python_version())"
  . /etc/os-release; echo "${VERSION_CODENAME:-none}"
  if command -v git >/dev/null; then echo git; else echo no-git; fi') ||
  die "cannot run python3 in $BASE_IMAGE; is it present (docker image ls) and a Python image?"
{ read -r base_python && read -r base_release && read -r base_git; } <<<"$base_facts"
wheel_python=$("$WHEEL_PYTHON" -c 'import platform; print(platform.python_version())')
[[ $wheel_python == "$base_python" ]] ||
  die "$BASE_IMAGE has Python $base_python but MAO_WHEEL_PYTHON=$WHEEL_PYTHON is $wheel_python;" \
    "set MAO_WHEEL_PYTHON to a Python $base_python"

say "wheels: requirements.txt, the project and pip with Python $wheel_python into var/wheels"
# build/ is setuptools' work dir: a stale one would put deleted modules in the project wheel.
rm -rf "$WHEELS" "$DEBS" build
mkdir -p "$WHEELS" "$DEBS"
.venv/bin/python -m pip download -q --no-deps -d "$WHEELS" pip >>"$LOG" 2>&1 ||
  die "pip download of pip failed; see $LOG"
pip_wheel=("$WHEELS"/pip-*.whl)
{ "$WHEEL_PYTHON" "${pip_wheel[0]}/pip" wheel -q -r requirements.txt -w "$WHEELS" &&
  "$WHEEL_PYTHON" "${pip_wheel[0]}/pip" wheel -q --no-deps -w "$WHEELS" .; } >>"$LOG" 2>&1 ||
  die "pip wheel failed; see $LOG"
rm -rf build

network=none
# shellcheck disable=SC1091 # the host's own release file
host_release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [[ $base_git == no-git && $base_release == "$host_release" ]]; then
  say "debs: git for $BASE_IMAGE (Debian $base_release, no git) into var/debs"
  mkdir -p "$DEBS/partial"
  in_base cat /var/lib/dpkg/status >"$DEBS/status"
  apt-get -q -y --download-only --no-install-recommends -o Dir::State::status="$DEBS/status" \
    -o Dir::Cache::archives="$DEBS" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    install git ca-certificates >>"$LOG" 2>&1 ||
    die "apt-get could not download git for $BASE_IMAGE; see $LOG (apt-get update first?)"
  rm -rf "$DEBS/partial" "$DEBS/status" "$DEBS/lock"
elif [[ $base_git == no-git ]]; then
  network=default
  say "$BASE_IMAGE has no git and is not Debian $host_release: apt-get in the build installs it"
fi

say "image $NODE_IMAGE: docker build from $BASE_IMAGE (network: $network)"
docker build --network "$network" --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$NODE_IMAGE" . \
  >>"$LOG" 2>&1 || die "docker build of $NODE_IMAGE failed; see $LOG"
say "ready: $NODE_IMAGE"
