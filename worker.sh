#!/usr/bin/env bash
# Starts this node's Celery processes (design.md §1); runs from any directory.
#
#   worker.sh [all]    the workers and beat (the default)
#   worker.sh worker   the workers only
#   worker.sh beat     beat only (RedBeat; its lock keeps a second beat idle)
#   worker.sh flower   Flower, the web monitor of the worker's tasks
#
# The worker consumes the node's shared queue and this machine's host queue (mao.host.<host>,
# MAO_WORKER_HOST: default the host name), which takes every step of a run after the first one
# this machine took (ARCHITECTURE.md, "One run, one machine"). Give each machine of a node its
# own MAO_WORKER_HOST and MAO_IMPORTDIR.
#
# The workers are two processes: the worker (prefork, MAO_WORKER_CONCURRENCY processes) takes
# the steps that compute (clone, spike detection, notification), the container worker
# (containers@<host>, Celery's thread pool with MAO_CONTAINER_SLOTS threads, default 128) the
# container steps, which wait on Docker: a long tool holds a thread, not a process. With
# MAO_CONTAINER_SLOTS=0 there is no container worker: the worker takes the container steps too.
#
# Environment, besides the node's MAO_* settings (mao_celery/settings.py):
#   MAO_WORKER_CONCURRENCY  worker pool processes (default 2)
#   MAO_SHUTDOWN_GRACE_S    seconds a stopping worker gets to finish its running tasks (default 60)
#   MAO_FLOWER_ADDRESS, MAO_FLOWER_PORT     where Flower listens (default 127.0.0.1, 5555)
#   MAO_FLOWER_USER, MAO_FLOWER_PASSWORD    Flower's basic auth, required beyond loopback; passed
#                                           in Flower's environment, never on its command line
#
# Shutdown on SIGTERM or SIGINT: both workers get SIGTERM (Celery's warm shutdown: no new tasks,
# the running ones go on) and MAO_SHUTDOWN_GRACE_S seconds to exit. If one is still running, the
# runs still in their containers are interrupted (maoctl node interrupt-runs: marked
# interrupted, their containers stopped) and the workers get 30 s more, then SIGKILL. Beat gets
# SIGTERM last. Exits 0; 1 on invalid settings. A worker or beat that ends by itself (a crash,
# e.g. kombu's on some Redis restarts) is started again 5 s later, unless a setting has become
# invalid meanwhile: then all are stopped and worker.sh exits 1 (no restart loop).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

CELERY=(.venv/bin/celery -A mao_celery.celery_app)
CONCURRENCY=${MAO_WORKER_CONCURRENCY:-2}
GRACE_S=${MAO_SHUTDOWN_GRACE_S:-60}
AFTER_INTERRUPT_S=30
BEAT_STOP_S=10
RESTART_DELAY_S=5
SLOTS=
WORKER_PID=
CONTAINERS_PID=
BEAT_PID=
PIDS=()
STOPPING=false
SETTINGS_INVALID=false

LOG_TAG=worker.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

start_worker() {
  "${CELERY[@]}" worker -l info -E -c "$CONCURRENCY" &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
  say "worker started (pid $WORKER_PID, concurrency $CONCURRENCY)"
}

# The container worker: Celery's thread pool as mao_celery.celery_app.ContainerPool (Celery's
# out-of-tree pool, `-P custom`), which consumes only this machine's containers queue.
start_containers() {
  CELERY_CUSTOM_WORKER_POOL=mao_celery.celery_app:ContainerPool \
    "${CELERY[@]}" worker -l info -E -P custom -c "$SLOTS" -n "containers@%h" &
  CONTAINERS_PID=$!
  PIDS+=("$CONTAINERS_PID")
  say "container worker started (pid $CONTAINERS_PID, slots $SLOTS)"
}

start_workers() {
  start_worker
  ((SLOTS == 0)) || start_containers
}

start_beat() {
  "${CELERY[@]}" beat -l info -S mao_celery.beat.RedBeatScheduler &
  BEAT_PID=$!
  PIDS+=("$BEAT_PID")
  say "beat started (pid $BEAT_PID)"
}

# wait_all SECONDS PID...: succeeds once every PID has exited; fails if one still runs after
# SECONDS (counted once for all).
wait_all() {
  local deadline=$((SECONDS + $1)) pid
  shift
  for pid in "$@"; do
    wait_exit "$pid" $((deadline > SECONDS ? deadline - SECONDS : 0)) || return 1
  done
}

stop_workers() {
  local pids=() pid
  for pid in "$WORKER_PID" "$CONTAINERS_PID"; do alive "$pid" && pids+=("$pid"); done
  ((${#pids[@]} > 0)) || return 0
  say "stopping the workers (pids ${pids[*]}): warm shutdown, running tasks get $GRACE_S s"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait_all "$GRACE_S" "${pids[@]}" && return 0
  say "grace period of $GRACE_S s over: interrupting the runs still in their containers"
  .venv/bin/maoctl node interrupt-runs --grace-s "$GRACE_S" ||
    say "interrupting the runs failed (see above); the workers get $AFTER_INTERRUPT_S s anyway"
  wait_all "$AFTER_INTERRUPT_S" "${pids[@]}" && return 0
  say "a worker still runs $AFTER_INTERRUPT_S s later: SIGKILL"
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

stop_beat() {
  alive "$BEAT_PID" || return 0
  say "stopping beat (pid $BEAT_PID)"
  kill -TERM "$BEAT_PID" 2>/dev/null || true
  wait_exit "$BEAT_PID" "$BEAT_STOP_S" && return 0
  say "beat still runs $BEAT_STOP_S s later: SIGKILL"
  kill -KILL "$BEAT_PID" 2>/dev/null || true
}

# supervise: until SIGTERM/SIGINT, restarts a worker or beat when it ends by itself (a crash),
# RESTART_DELAY_S seconds later; then stops them all. (A signal interrupts `wait`, which then leaves
# `ended` unset.)
supervise() {
  local ended status pid others
  while ! $STOPPING; do
    ended='' status=0
    wait -n -p ended "${PIDS[@]}" || status=$?
    [[ -n ${ended:-} ]] || continue
    others=()
    for pid in "${PIDS[@]}"; do [[ $pid == "$ended" ]] || others+=("$pid"); done
    PIDS=("${others[@]}")
    # A process that ended because of a setting (e.g. MAO_CONFIG's file changed since the start)
    # would end again at every restart: stop the node with exit 1 instead of looping.
    if ! check_settings; then
      say "process $ended ended (exit $status) and a setting is invalid (above): stopping"
      SETTINGS_INVALID=true
      break
    fi
    say "process $ended ended by itself (exit $status): restarting it in $RESTART_DELAY_S s"
    sleep "$RESTART_DELAY_S" &
    wait $! || true
    $STOPPING && break
    case $ended in
      "$WORKER_PID") start_worker ;;
      "$CONTAINERS_PID") start_containers ;;
      *) start_beat ;;
    esac
  done
  stop_workers
  stop_beat
  say "stopped"
  ! $SETTINGS_INVALID || exit 1
}

# check_settings: the node's settings are valid; else maoctl's one line is on stderr.
check_settings() { .venv/bin/maoctl config >/dev/null; }

# read_slots: SLOTS is the node's MAO_CONTAINER_SLOTS (from its environment or MAO_CONFIG).
read_slots() {
  SLOTS=$(.venv/bin/maoctl config --json | .venv/bin/python -c \
    'import json, sys; print(json.load(sys.stdin)["container_slots"])')
}

is_loopback() {
  [[ $1 == localhost || $1 == ::1 || $1 =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]
}

run_flower() {
  local address=${MAO_FLOWER_ADDRESS:-127.0.0.1} port=${MAO_FLOWER_PORT:-5555}
  local user=${MAO_FLOWER_USER:-} password=${MAO_FLOWER_PASSWORD:-} auth=off
  if [[ ! $port =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
    die "MAO_FLOWER_PORT=$port is not a port number (1-65535)"
  fi
  unset FLOWER_BASIC_AUTH MAO_FLOWER_PASSWORD
  if [[ -n $user || -n $password ]]; then
    [[ -n $user && -n $password ]] ||
      die "set both MAO_FLOWER_USER and MAO_FLOWER_PASSWORD for Flower's basic auth, or neither"
    [[ $user != *[:,]* && $password != *,* ]] ||
      die "MAO_FLOWER_USER may not contain ':' or ',', MAO_FLOWER_PASSWORD not ','; choose others"
    export FLOWER_BASIC_AUTH=$user:$password
    auth="user $user"
  elif ! is_loopback "$address"; then
    die "refusing to serve Flower on $address without basic auth: set MAO_FLOWER_USER and MAO_FLOWER_PASSWORD, or use a loopback address"
  fi
  say "Flower on http://$address:$port/ (basic auth: $auth)"
  # mao_celery/flower.py: Flower with every endpoint (also /metrics) behind the basic auth.
  exec .venv/bin/python -m mao_celery.flower --address="$address" --port="$port"
}

case ${1:-all} in
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
esac
[[ -x .venv/bin/celery ]] || die "no .venv/bin/celery in $PWD; run scripts/setup.sh first"
# The node's settings, checked here (and again before any restart): an invalid one is one line
# and exit 1, not a Celery traceback nor a restart loop.
check_settings || exit 1
read_slots
[[ $CONCURRENCY =~ ^[1-9][0-9]*$ ]] ||
  die "MAO_WORKER_CONCURRENCY=$CONCURRENCY is not a positive whole number"
[[ $GRACE_S =~ ^[0-9]+$ ]] || die "MAO_SHUTDOWN_GRACE_S=$GRACE_S is not a whole number of seconds"

case ${1:-all} in
  all | worker)
    trap 'STOPPING=true' TERM INT
    start_workers
    [[ ${1:-all} == worker ]] || start_beat
    supervise
    ;;
  beat) exec "${CELERY[@]}" beat -l info -S mao_celery.beat.RedBeatScheduler ;;
  flower) run_flower ;;
  *) die "unknown role '$1': use worker.sh [all|worker|beat|flower]" ;;
esac
