#!/usr/bin/env bash
# The main job on one node: set the node up, start its worker and beat (worker.sh), build the demo
# tool's image, register the demo tool with a local data repository, run it and print the report,
# which shows a spike, and the notification published for it. Idempotent: run it again for another run.
#
# Environment: MAO_DEMO_BASE_IMAGE (default mao-base:bookworm, the local base image set-up builds;
# python:3.12-slim where a registry is reachable), and the node's MAO_* settings (see README;
# MAO_IMPORTDIR defaults to var/importdir here).
# Stop the node afterwards with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VAR=$PWD/var
DEMO_IMAGE=mao-demo:latest
DEMO_REPO=$VAR/demo/demo-data.git
# The demo's data stays in this clone (var/importdir) unless MAO_IMPORTDIR says otherwise.
export MAO_IMPORTDIR=${MAO_IMPORTDIR:-$VAR/importdir}

LOG_TAG=demo
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

bash scripts/setup.sh
PATH=$PWD/.venv/bin:$PATH

node_running() {
  [[ -f $VAR/run/node.pid ]] && alive "$(<"$VAR/run/node.pid")"
}
if node_running; then
  say "node: worker and beat already running (pid $(<"$VAR/run/node.pid"))"
else
  say "node: starting worker and beat with worker.sh (log var/log/node.log)"
  start_detached "$VAR/run/node.pid" "$VAR/log/node.log" ./worker.sh all
fi

say "image $DEMO_IMAGE: building from demo_tool/ on ${MAO_DEMO_BASE_IMAGE:-mao-base:bookworm}"
build_demo_image "$VAR/log/demo-build.log"

[[ -d $DEMO_REPO ]] || say "data repository: creating $DEMO_REPO"
make_demo_repo "$DEMO_REPO"

if registered=$(maoctl tool get demo --json 2>/dev/null); then
  say "tool demo: already registered"
  [[ $registered == *"\"data_repo\": \"file://$DEMO_REPO\""* ]] ||
    say "note: the registered demo tool is another clone's or node's (its data repository is" \
      "not $DEMO_REPO); this run uses it as registered"
else
  maoctl tool add demo "MAO demo" "$DEMO_IMAGE" "file://$DEMO_REPO" \
    https://example.org/mao/demo-tool csv --description "Mock collector that trips the spike rule"
fi
maoctl tool get demo

say "running the demo tool"
maoctl tool run demo --wait-for-worker  # the worker started above may still be starting
maoctl notifications list --tool demo
say "done: the node keeps running (maoctl status); stop it with scripts/stop.sh"
