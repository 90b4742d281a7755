#!/usr/bin/env bash
# Starts or stops a private MariaDB server on a loopback port, in a directory of its own.
#
#   scripts/mariadb.sh start DIR PORT   # initialise DIR if new, start, wait until it answers
#   scripts/mariadb.sh start-primary DIR PORT
#                                       # the same, writing a binary log that replicas follow
#   scripts/mariadb.sh start-replica DIR PORT PRIMARY_PORT
#                                       # a read-only GTID replica of the primary on
#                                       # PRIMARY_PORT, caught up when this returns
#   scripts/mariadb.sh stop DIR         # stop the server started in DIR
#
# root has an empty password and is reachable over TCP on 127.0.0.1 only. The server listens
# on 127.0.0.1, or on the comma-separated addresses in MARIADB_BIND_ADDRESS (127.0.0.1 among
# them: the start-up check connects there).
set -euo pipefail

usage="usage: mariadb.sh start DIR PORT | start-primary DIR PORT | start-replica DIR PORT PRIMARY_PORT | stop DIR"
cmd=${1:?$usage}
dir=${2:?directory required}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# What the server's role adds to its command line. A replica has a GTID domain of its own:
# a stray write on it shows as divergence instead of stopping replication.
role=()
case "$cmd" in
start) role=(--skip-log-bin) ;;
start-primary) role=(--log-bin="$dir/binlog" --server-id=1 --binlog-format=ROW --log-slave-updates) ;;
start-replica) role=(--skip-log-bin --server-id=2 --read-only --gtid-domain-id=2 --relay-log="$dir/relay") ;;
esac

sql() { mariadb --no-defaults -h127.0.0.1 -P"$1" -uroot -N -B -e "$2"; }

case "$cmd" in
start | start-primary | start-replica)
  port=${3:?port required}
  # A temporary directory of its own: servers installed side by side share nothing.
  mkdir -p "$dir/tmp"
  install() {
    mariadb-install-db --user="$(id -un)" --datadir="$dir/data" --tmpdir="$dir/tmp" \
      --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1
  }
  if [ ! -d "$dir/data/mysql" ]; then
    # Once in a while the bootstrap fails (seen: "Unknown table 'mysql.tmp_user_sys'"); a
    # second try on a clean directory succeeds.
    install || { rm -rf "$dir/data"; install; } || { cat "$dir/install.log" >&2; exit 1; }
  fi
  # --no-defaults: nothing from /etc/mysql leaks in; every setting is here.
  mariadbd --no-defaults --user="$(id -un)" --datadir="$dir/data" --port="$port" \
    --tmpdir="$dir/tmp" "${role[@]}" \
    --bind-address="${MARIADB_BIND_ADDRESS:-127.0.0.1}" --socket="$dir/sock" --pid-file="$dir/pid" \
    --max-connections=2000 --max-allowed-packet=256M \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=128M \
    --innodb-flush-log-at-trx-commit="${MARIADB_FLUSH_LOG_AT_TRX_COMMIT:-2}" --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_general_ci --local-infile=1 \
    --log-error="$dir/error.log" >/dev/null 2>&1 &
  echo $! >"$dir/launcher.pid"
  up=
  for _ in $(seq 1 300); do
    if sql "$port" 'select 1' >/dev/null 2>&1; then
      up=1
      break
    fi
    if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
      echo "mariadbd exited during start-up; see $dir/error.log" >&2
      tail -20 "$dir/error.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "mariadbd did not answer on port $port within 30s" >&2
    exit 1
  fi
  case "$cmd" in
  start-primary)
    sql "$port" "CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY 'repl';
      GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'repl'@'%'"
    ;;
  start-replica)
    primary=${4:?primary port required}
    # Set up once: a restarted replica goes on from where it was.
    if [ -z "$(sql "$port" "SHOW SLAVE STATUS")" ]; then
      sql "$port" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$primary,
        MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos,
        MASTER_CONNECT_RETRY=1"
    fi
    sql "$port" "START SLAVE"
    pos=$(sql "$primary" "SELECT @@gtid_binlog_pos")
    caught=$(sql "$port" "SELECT MASTER_GTID_WAIT('$pos', 30)")
    if [ "$caught" != 0 ]; then
      echo "the replica on port $port did not catch up with $primary within 30s" >&2
      sql "$port" "SHOW SLAVE STATUS\G" >&2 || true
      exit 1
    fi
    ;;
  esac
  ;;
stop)
  pidfile="$dir/pid"
  [ -f "$pidfile" ] || pidfile="$dir/launcher.pid"
  [ -f "$pidfile" ] || exit 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  ;;
*)
  echo "$usage" >&2
  exit 2
  ;;
esac
