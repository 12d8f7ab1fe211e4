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

# make_certs DIR NAME...: a CA (DIR/ca.pem, DIR/ca-key.pem) and for each NAME a certificate
# DIR/NAME.pem with its key DIR/NAME-key.pem (CN=NAME), signed by that CA, valid for 127.0.0.1 and
# localhost as server and client (demos and tests only: 30 days, keys unencrypted, mode 600).
# Files already there are kept.
make_certs() {
  local dir=$1 name
  shift
  mkdir -p "$dir"
  if [[ ! -f $dir/ca.pem ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=MAO demo CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
  fi
  for name in "$@"; do
    [[ -f $dir/$name.pem ]] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$dir/$name-key.pem" -out "$dir/$name.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
      -CAcreateserial -days 30 -out "$dir/$name.pem" 2>/dev/null -extfile <(
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n'
      )
    rm -f "$dir/$name.csr"
  done
  chmod 600 "$dir"/*-key.pem
}

# build_demo_image LOGFILE: builds the demo tool's image mao-demo:latest from demo_tool/ on
# MAO_DEMO_BASE_IMAGE (default mao-base:bookworm, the local base image set-up builds), quietly;
# on failure prints LOGFILE and exits 1.
build_demo_image() {
  docker build -q --build-arg "BASE_IMAGE=${MAO_DEMO_BASE_IMAGE:-mao-base:bookworm}" \
    -t mao-demo:latest demo_tool >"$1" 2>&1 || { cat "$1" >&2; exit 1; }
}

# make_demo_repo DIR: a bare git repository at DIR holding one commit (a README) for the demo
# tool's data, unless DIR exists.
make_demo_repo() {
  local repo=$1 work
  [[ -d $repo ]] && return
  work=$(mktemp -d)
  git init -q --bare "$repo"
  git clone -q "$repo" "$work/data" 2>/dev/null
  printf '# MAO demo data\nThe demo tool adds its snapshots here.\n' >"$work/data/README.md"
  git -C "$work/data" add README.md
  git -C "$work/data" -c user.name="MAO demo" -c user.email=demo@localhost commit -q -m "Demo data"
  git -C "$work/data" push -q origin HEAD
  rm -rf "$work"
}
