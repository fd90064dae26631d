# Sourced: a private PostgreSQL instance on a loopback port, run as the
# `postgres` user (initdb refuses root), for the local cluster and its tests.
# Installs Debian's postgresql (and haproxy) when missing.

# Installs PostgreSQL and HAProxy from Debian if either is missing.
pg_install() {
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || ! command -v haproxy >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql haproxy >/dev/null
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  export PG_BIN
}

# pg_start DIR PORT: creates (once) and starts an instance with its data in
# DIR/pgdata, listening on 127.0.0.1:PORT only, with database `gathering`.
pg_start() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  chown postgres "$dir"
  if [ ! -f "$dir/pgdata/PG_VERSION" ]; then
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/pgdata" -l "$dir/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c synchronous_commit=on" start >/dev/null
  runuser -u postgres -- "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'gathering'" | grep -q 1 \
    || runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres gathering
}

# pg_stop DIR: stops the instance (fast: open connections are cut).
pg_stop() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$1/pgdata" -m fast -w stop >/dev/null 2>&1 || true
}
