#!/usr/bin/env bash
# Starts or stops a private MariaDB server on a loopback port, in a directory of its own.
#
#   scripts/mariadb.sh start DIR PORT   # initialise DIR if new, start, wait until it answers
#   scripts/mariadb.sh stop DIR         # stop the server started in DIR
#
# root has an empty password and is reachable over TCP on 127.0.0.1 only. The server listens
# on 127.0.0.1, or on the comma-separated addresses in MARIADB_BIND_ADDRESS (127.0.0.1 among
# them: the start-up check connects there).
set -euo pipefail

cmd=${1:?usage: mariadb.sh start DIR PORT | stop DIR}
dir=${2:?directory required}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case "$cmd" in
start)
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
    --tmpdir="$dir/tmp" \
    --bind-address="${MARIADB_BIND_ADDRESS:-127.0.0.1}" --socket="$dir/sock" --pid-file="$dir/pid" \
    --skip-log-bin --max-connections=2000 --max-allowed-packet=256M \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=128M \
    --innodb-flush-log-at-trx-commit="${MARIADB_FLUSH_LOG_AT_TRX_COMMIT:-2}" --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_general_ci --local-infile=1 \
    --log-error="$dir/error.log" >/dev/null 2>&1 &
  echo $! >"$dir/launcher.pid"
  for _ in $(seq 1 300); do
    if mariadb --no-defaults -h127.0.0.1 -P"$port" -uroot -e 'select 1' >/dev/null 2>&1; then
      exit 0
    fi
    if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
      echo "mariadbd exited during start-up; see $dir/error.log" >&2
      tail -20 "$dir/error.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  echo "mariadbd did not answer on port $port within 30s" >&2
  exit 1
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
  echo "usage: mariadb.sh start DIR PORT | stop DIR" >&2
  exit 2
  ;;
esac
