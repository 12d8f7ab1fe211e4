#!/usr/bin/env bash
# The etcd user and role of one federation node (README "Joining a federation"): prints the
# etcdctl commands (the default) or runs them (--apply) as the federation's etcd administrator.
#
#   scripts/etcd-roles.sh [--apply] [--prefix P] [--user NAME] [--tools] [--datasets]
#                         [--password-file FILE] NODE_ID
#
# The role mao-NODE_ID may:
#   read       every key under the prefix (default /mao/): tools, datasets, members, notifications
#   readwrite  P/members/NODE_ID (its own heartbeat entry, and nobody else's)
#   readwrite  P/notifications/ (the spikes it publishes; leases carry their retention)
#   readwrite  P/tools/ with --tools, P/datasets/ with --datasets (if the federation lets this
#              node register and remove them; without, tools and datasets are read-only to it)
# The user (default mao-NODE_ID) gets that role. Its password is the first line of
# --password-file (needed with --apply; given to etcdctl on stdin, never on a command line);
# printed commands read it from "$PASSWORD_FILE". With client certificates (etcd
# --client-cert-auth) issue the node a certificate whose CN is this user: etcd takes the CN as
# the user of a request that carries no password.
#
# --apply runs etcdctl (Debian's etcd-client) with the administrator's connection from the
# environment: ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY, ETCDCTL_USER
# (root:PASSWORD). Adding a role or user that exists fails; grants are idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_TAG=etcd-roles
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

usage() {
  die "usage: scripts/etcd-roles.sh [--apply] [--prefix P] [--user NAME] [--tools] [--datasets]" \
    "[--password-file FILE] NODE_ID"
}

APPLY=false
PREFIX=/mao/
USER_NAME=
TOOLS=false
DATASETS=false
PASSWORD_FILE=
NODE_ID=
while (($#)); do
  case $1 in
    --apply) APPLY=true ;;
    --prefix) PREFIX=${2:?--prefix needs a value} && shift ;;
    --user) USER_NAME=${2:?--user needs a value} && shift ;;
    --tools) TOOLS=true ;;
    --datasets) DATASETS=true ;;
    --password-file) PASSWORD_FILE=${2:?--password-file needs a value} && shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
    -*) usage ;;
    *) [[ -z $NODE_ID ]] || usage && NODE_ID=$1 ;;
  esac
  shift
done
[[ -n $NODE_ID ]] || usage
[[ $NODE_ID =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "node id $NODE_ID: letters, digits, . _ - only"
[[ $PREFIX == /*/ ]] || die "prefix $PREFIX must start and end with /"
ROLE=mao-$NODE_ID
USER_NAME=${USER_NAME:-mao-$NODE_ID}
if $APPLY; then
  [[ -n $PASSWORD_FILE && -r $PASSWORD_FILE ]] || die "--apply needs a readable --password-file"
  [[ -n $(head -n1 "$PASSWORD_FILE") ]] || die "$PASSWORD_FILE: the first line (the password) is empty"
  command -v etcdctl >/dev/null || die "etcdctl not found: apt-get install etcd-client"
fi

# step ARGS...: one etcdctl command, printed or run. "user add" reads the password on stdin.
step() {
  if ! $APPLY; then
    if [[ $1 == user && $2 == add ]]; then
      printf 'head -n1 "$PASSWORD_FILE" | etcdctl %s --interactive=false\n' "$*"
    else
      printf 'etcdctl %s\n' "$*"
    fi
  elif [[ $1 == user && $2 == add ]]; then
    head -n1 "$PASSWORD_FILE" | ETCDCTL_API=3 etcdctl "$@" --interactive=false >/dev/null
    say "etcdctl $*: done"
  else
    ETCDCTL_API=3 etcdctl "$@" >/dev/null
    say "etcdctl $*: done"
  fi
}

$APPLY || echo "# node $NODE_ID: role $ROLE, user $USER_NAME, prefix $PREFIX (ETCDCTL_API=3)"
step role add "$ROLE"
step role grant-permission "$ROLE" --prefix=true read "$PREFIX"
step role grant-permission "$ROLE" readwrite "${PREFIX}members/$NODE_ID"
step role grant-permission "$ROLE" --prefix=true readwrite "${PREFIX}notifications/"
! $TOOLS || step role grant-permission "$ROLE" --prefix=true readwrite "${PREFIX}tools/"
! $DATASETS || step role grant-permission "$ROLE" --prefix=true readwrite "${PREFIX}datasets/"
step user add "$USER_NAME"
step user grant-role "$USER_NAME" "$ROLE"
