#!/usr/bin/env bash
# A local cluster to try, in one command: PostgreSQL (a private instance on
# 127.0.0.1:55432, data in ./cluster-data, run as the postgres user), three
# nodes (n1..n3 on 127.0.0.1:8081..8083, admin on 9091..9093) and HAProxy on
# 127.0.0.1:8080 with deploy/haproxy.cfg; the demo page at
# http://127.0.0.1:8080/. Installs Debian's postgresql and haproxy when
# missing (so as root). Ctrl-C stops everything; the data stays.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cluster-lib.sh

dir=${GATHERING_CLUSTER_DIR:-$PWD/cluster-data}
pg_install
./scripts/build-web.sh
cargo build --locked --release -p gathering-native
pg_start "$dir" 55432

pids=()
stop() {
  # Ignored, not reset: a second TERM (timeout signals the child and then
  # its group) would otherwise end the script before PostgreSQL is stopped.
  trap '' INT TERM
  trap - EXIT
  # SIGTERM drains each node: its gatherings are handed off or saved.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pg_stop "$dir"
}
trap stop EXIT
trap 'stop; exit 0' INT TERM
for i in 1 2 3; do
  target/release/gathering-server \
    --cluster "postgres://postgres@127.0.0.1:55432/gathering" --node "n$i" \
    --listen "127.0.0.1:808$i" --admin-listen "127.0.0.1:909$i" \
    --advertise "ws://127.0.0.1:808$i" &
  pids+=($!)
done
haproxy -f deploy/haproxy.cfg -db &
pids+=($!)
echo "cluster up: http://127.0.0.1:8080/ (nodes 8081-8083, PostgreSQL 127.0.0.1:55432); Ctrl-C stops it"
wait
