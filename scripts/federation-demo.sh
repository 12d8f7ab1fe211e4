#!/usr/bin/env bash
# A federation on one machine (README "Joining a federation"): a 3-member etcd cluster with TLS
# (certificates made for the demo with openssl) and authentication, the role of each node made
# by scripts/etcd-roles.sh, and two nodes, node-a and node-b, each with its own Redis database,
# importdir, etcd user and client certificate, and its worker and beat (worker.sh). Node A
# registers the demo tool and runs it; node B logs A's spike and alerts (MAO_NOTIFY_COMMAND
# appends the alert's JSON as a line to a file); `maoctl members` lists both. Then one etcd member is
# stopped and both nodes go on: another run on A, B logs it and still lists the members.
# Stop it all with scripts/stop.sh (only the federation: scripts/stop.sh federation).
# Re-running it reuses what is there (certificates, etcd data, users, the tool).
#
# Environment:
#   MAO_FED_DIR         where everything lives: certs/, etcd-N/, node-X/, run/*.pid, log/
#                       (default var/federation)
#   MAO_FED_ETCD_PORTS  six ports: the members' client ports, then their peer ports
#                       (default "23791 23792 23793 23801 23802 23803")
#   MAO_FED_REDIS       the Redis the nodes use, without a database (default
#                       redis://127.0.0.1:6379); node A uses database 13, node B 14
#   MAO_FED_SETUP       1 (default): run scripts/setup.sh first; 0: the services are up already
#   MAO_DEMO_BASE_IMAGE the demo tool image's base (default mao-base:bookworm)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${MAO_FED_DIR:-$PWD/var/federation}
read -r -a PORTS <<<"${MAO_FED_ETCD_PORTS:-23791 23792 23793 23801 23802 23803}"
REDIS=${MAO_FED_REDIS:-redis://127.0.0.1:6379}
NODES=(node-a node-b)
declare -A REDIS_DB=([node-a]=13 [node-b]=14)
PREFIX=/mao/
WAIT_S=90

LOG_TAG=federation
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

((${#PORTS[@]} == 6)) || die "MAO_FED_ETCD_PORTS needs six ports, got ${#PORTS[@]}"
[[ ${MAO_FED_SETUP:-1} == 0 ]] || bash scripts/setup.sh
PATH=$PWD/.venv/bin:$PATH
mkdir -p "$DIR"/{run,log}

# wait_for WHAT CMD...: until CMD succeeds (quietly); dies naming WHAT after WAIT_S seconds.
wait_for() {
  local what=$1 deadline=$((SECONDS + WAIT_S))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "not within $WAIT_S s: $what"
    sleep 0.5
  done
}

running() { [[ -f $DIR/run/$1.pid ]] && alive "$(<"$DIR/run/$1.pid")"; }

secret() { # secret FILE: a random password in FILE (mode 600), unless FILE exists
  [[ -f $1 ]] || (umask 077 && openssl rand -hex 16 >"$1")
}

# --- etcd: three members, TLS to clients and peers (client certificates required), auth ---
say "certificates: CA, server, root and one per node in $DIR/certs (openssl, demo only)"
make_certs "$DIR/certs" server root "${NODES[@]/#/mao-}"
CERTS=$DIR/certs
endpoints=()
cluster=()
for i in 0 1 2; do
  endpoints+=("127.0.0.1:${PORTS[i]}")
  cluster+=("fed-$i=https://127.0.0.1:${PORTS[i + 3]}")
done
ENDPOINTS=$(IFS=,; echo "${endpoints[*]}")

start_member() { # start_member INDEX
  local i=$1 client=https://127.0.0.1:${PORTS[$1]} peer=https://127.0.0.1:${PORTS[$1 + 3]}
  running "etcd-$i" && return
  start_detached "$DIR/run/etcd-$i.pid" "$DIR/log/etcd-$i.log" etcd --name "fed-$i" \
    --data-dir "$DIR/etcd-$i" --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$(IFS=,; echo "${cluster[*]}")" --initial-cluster-state new \
    --cert-file "$CERTS/server.pem" --key-file "$CERTS/server-key.pem" \
    --trusted-ca-file "$CERTS/ca.pem" --client-cert-auth \
    --peer-cert-file "$CERTS/server.pem" --peer-key-file "$CERTS/server-key.pem" \
    --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth
}
say "etcd: 3 members on $ENDPOINTS (TLS, client certificates required; logs $DIR/log/etcd-*.log)"
for i in 0 1 2; do start_member "$i"; done

# The administrator: etcd takes the CN of the "root" certificate as its user.
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=${endpoints[*]/#/https://} ETCDCTL_CACERT=$CERTS/ca.pem \
  ETCDCTL_CERT=$CERTS/root.pem ETCDCTL_KEY=$CERTS/root-key.pem
ETCDCTL_ENDPOINTS=${ETCDCTL_ENDPOINTS// /,}
wait_for "etcd members healthy" etcdctl endpoint health
if ! etcdctl user get root >/dev/null 2>&1; then
  say "etcd: user root, authentication on"
  secret "$DIR/root.password"
  etcdctl user add root --interactive=false <"$DIR/root.password" >/dev/null
  etcdctl user grant-role root root >/dev/null
  etcdctl auth enable >/dev/null
fi
for node in "${NODES[@]}"; do
  mkdir -p "$DIR/$node/importdir"
  if ! etcdctl user get "mao-$node" >/dev/null 2>&1; then
    say "etcd: role and user mao-$node (scripts/etcd-roles.sh --apply --tools --datasets $node)"
    secret "$DIR/$node/etcd.password"
    bash scripts/etcd-roles.sh --apply --tools --datasets --prefix "$PREFIX" \
      --password-file "$DIR/$node/etcd.password" "$node" >/dev/null
  fi
done

# --- the two nodes ---
node_env() { # node_env NODE: the node's settings, as NAME=VALUE words for env
  local node=$1
  printf '%s\n' "MAO_NODE_ID=$node" "MAO_WORKER_HOST=$node" "MAO_WORKER_CONCURRENCY=1" \
    "MAO_REDIS_URL=$REDIS/${REDIS_DB[$node]}" "MAO_IMPORTDIR=$DIR/$node/importdir" \
    "MAO_ETCD_ENDPOINTS=$ENDPOINTS" "MAO_ETCD_PREFIX=$PREFIX" "MAO_ETCD_USER=mao-$node" \
    "MAO_ETCD_PASSWORD_FILE=$DIR/$node/etcd.password" "MAO_ETCD_CA=$CERTS/ca.pem" \
    "MAO_ETCD_CERT=$CERTS/mao-$node.pem" "MAO_ETCD_KEY=$CERTS/mao-$node-key.pem" \
    "MAO_NOTIFY_COMMAND=sh -c 'cat >>\"\$0\" && echo >>\"\$0\"' $DIR/$node/alerts.jsonl"
}
# The caller's own MAO_* settings are left out of the nodes' environments.
mapfile -t UNSET < <(env | sed -n 's/^\(MAO_[A-Za-z0-9_]*\)=.*/--unset=\1/p')
on() { # on NODE CMD...: CMD run by env with NODE's settings
  local node=$1 settings
  shift
  mapfile -t settings < <(node_env "$node")
  env "${UNSET[@]}" "${settings[@]}" "$@"
}
for node in "${NODES[@]}"; do
  if running "$node"; then
    say "$node: worker and beat already running (pid $(<"$DIR/run/$node.pid"))"
  else
    say "$node: starting worker and beat (worker.sh; Redis db ${REDIS_DB[$node]}, log $DIR/log/$node.log)"
    mapfile -t settings < <(node_env "$node")
    start_detached "$DIR/run/$node.pid" "$DIR/log/$node.log" \
      env "${UNSET[@]}" "${settings[@]}" ./worker.sh all
  fi
done

members_listed() { # members_listed NODE: NODE's `maoctl members` lists both nodes
  local out
  out=$(on "$1" maoctl members) && [[ $out == *node-a* && $out == *node-b* ]]
}
wait_for "both nodes in maoctl members" members_listed node-a

say "image mao-demo:latest: building from demo_tool/"
build_demo_image "$DIR/log/demo-build.log"
make_demo_repo "$DIR/demo-data.git"
if on node-a maoctl tool get demo >/dev/null 2>&1; then
  say "node-a: tool demo already registered"
else
  say "node-a: registering the demo tool"
  on node-a maoctl tool add demo "MAO demo" mao-demo:latest "file://$DIR/demo-data.git" \
    https://example.org/mao/demo-tool csv --description "Mock collector that trips the spike rule"
fi

spikes_on_b() { grep -c "spike: tool demo on node node-a" "$DIR/log/node-b.log" || true; }
alerts_on_b() { [[ -f $DIR/node-b/alerts.jsonl ]] && wc -l <"$DIR/node-b/alerts.jsonl" || echo 0; }
more_than() { (($("$1") > $2)); } # more_than COUNTER N: COUNTER now prints more than N

run_on_a() { # run_on_a: a run of demo on node A, then B's spike line and alert for it
  local spikes alerts
  spikes=$(spikes_on_b)
  alerts=$(alerts_on_b)
  say "node-a: running the demo tool"
  on node-a maoctl tool run demo --wait-for-worker
  wait_for "node-b logging node-a's spike" more_than spikes_on_b "$spikes"
  say "node-b log: $(grep "spike: tool demo on node node-a" "$DIR/log/node-b.log" | tail -n1)"
  wait_for "node-b's alert" more_than alerts_on_b "$alerts"
  say "node-b alert ($DIR/node-b/alerts.jsonl): $(tail -n1 "$DIR/node-b/alerts.jsonl")"
}

run_on_a
say "node-a: maoctl members"
on node-a maoctl members

say "etcd: stopping member fed-2 (pid $(<"$DIR/run/etcd-2.pid")); 2 of 3 keep the quorum"
kill -TERM "$(<"$DIR/run/etcd-2.pid")"
wait_exit "$(<"$DIR/run/etcd-2.pid")" 30 || die "etcd member fed-2 did not stop"
rm -f "$DIR/run/etcd-2.pid"
run_on_a
say "node-b: maoctl members (one etcd member down)"
on node-b maoctl members
wait_for "both nodes still in node-b's maoctl members" members_listed node-b
say "done: the federation keeps running on 2 etcd members; stop it all with scripts/stop.sh" \
  "(or only the federation: scripts/stop.sh federation)"
