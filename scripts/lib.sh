# Shell functions shared by worker.sh and the scripts in scripts/: sourced, never run.
# The sourcing script sets LOG_TAG first (e.g. LOG_TAG=setup); say and die prefix their lines with it.

# say TEXT...: one line on stdout, "[LOG_TAG] TEXT".
say() { printf '[%s] %s\n' "$LOG_TAG" "$*"; }

# die TEXT...: one line on stderr, "[LOG_TAG] ERROR: TEXT", then exit 1.
die() {
  printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2
  exit 1
}

# alive PID: the process exists and is not a zombie. The state is the field after the ")" that
# closes the process name (a name may hold spaces and parentheses).
alive() {
  local stat
  [[ -n $1 ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# wait_exit PID SECONDS: succeeds once PID has exited; fails if it still runs after SECONDS.
wait_exit() {
  local deadline=$((SECONDS + $2))
  while alive "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# start_detached PIDFILE LOGFILE CMD...: runs CMD in its own session with no stdin, its output in
# LOGFILE and its pid in PIDFILE (written by the process itself just before exec).
start_detached() {
  local pidfile=$1 logfile=$2
  shift 2
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner bash
  setsid bash -c 'echo $$ >"$0" && exec "$@"' "$pidfile" "$@" </dev/null >"$logfile" 2>&1 &
}
