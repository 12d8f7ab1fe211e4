#!/usr/bin/env bash
# Stops what scripts/setup.sh started, and only that: the processes named by its pid files in
# var/run/. A service that was already running before setup.sh has no pid file and is left alone.
# Each process gets SIGTERM and up to 60 s to exit (dockerd stops its containers first), then SIGKILL.
# First it stops what scripts/federation-demo.sh started (pid files in $MAO_FED_DIR/run, default
# var/federation/run: its nodes, then its etcd members); `stop.sh federation` stops only those.
# Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUN=$PWD/var/run
STOP_TIMEOUT_S=60

LOG_TAG=stop
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# stop_service NAME COMMAND: stops the pid in var/run/NAME.pid if that process still runs COMMAND
# (its command line names it: worker.sh runs as "bash ./worker.sh all").
stop_service() {
  local name=$1 command=$2 pidfile=$RUN/$1.pid pid
  if [[ ! -f $pidfile ]]; then
    say "$name: not started by setup.sh"
    return
  fi
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$command"* ]]; then
    say "$name: stopping pid $pid"
    kill -TERM "$pid"
    if ! wait_exit "$pid" "$STOP_TIMEOUT_S"; then
      say "$name: still running after $STOP_TIMEOUT_S s, sending SIGKILL"
      kill -KILL "$pid"
    fi
  else
    say "$name: pid file var/run/$name.pid is stale"
  fi
  rm -f "$pidfile"
}

stop_federation() {
  local RUN=${MAO_FED_DIR:-$PWD/var/federation}/run pidfile name # stop_service reads RUN
  for pidfile in "$RUN"/node-*.pid "$RUN"/etcd-*.pid; do
    [[ -f $pidfile ]] || continue
    name=$(basename "$pidfile" .pid)
    if [[ $name == node-* ]]; then stop_service "$name" worker.sh; else stop_service "$name" etcd; fi
  done
}

stop_federation
[[ ${1:-} != federation ]] || exit 0
stop_service node worker.sh
stop_service etcd etcd
stop_service redis redis-server
stop_service dockerd dockerd
