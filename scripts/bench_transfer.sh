#!/usr/bin/env bash
# The global-transaction benchmark: transfers between two databases at 16 clients through
# Tandem, against the same two updates as plain local transactions straight to MariaDB, in
# one run. Prints transfers per second, the ratio, latency, and store writes per transaction.
#
#   scripts/bench_transfer.sh                  # 15 s per run
#   BENCH_SECONDS=5 scripts/bench_transfer.sh
#
# MariaDB runs with its production default durability (innodb_flush_log_at_trx_commit=1),
# as the coordinator's own store syncs its decisions to disk; set
# MARIADB_FLUSH_LOG_AT_TRX_COMMIT=2 to compare against a database that does not.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

export BENCH_SECONDS=${BENCH_SECONDS:-15}
export BENCH_CLIENTS=${BENCH_CLIENTS:-16}
scripts/setup.sh
cargo build --release --quiet
cargo bench --no-run --bench transfer --quiet 2>/dev/null

work="target/bench-transfer"
rm -rf "$work" && mkdir -p "$work"
db_port=$(free_port)
port_a=$(free_port)
port_b=$(free_port)
admin_port=$(free_port)
MARIADB_FLUSH_LOG_AT_TRX_COMMIT=${MARIADB_FLUSH_LOG_AT_TRX_COMMIT:-1} \
  scripts/mariadb.sh start "$work/mariadb" "$db_port"
tandem_pid=""
cleanup() {
  [ -n "$tandem_pid" ] && kill "$tandem_pid" 2>/dev/null && wait "$tandem_pid" 2>/dev/null
  scripts/mariadb.sh stop "$work/mariadb"
}
trap cleanup EXIT
for db in bank_a bank_b; do
  mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "
    CREATE DATABASE $db;
    CREATE TABLE $db.account (id INT PRIMARY KEY, balance BIGINT NOT NULL);
    USE $db;
    INSERT INTO account SELECT seq, 1000000 FROM seq_1_to_1000;"
done
cat >"$work/tandem.yaml" <<YAML
listeners:
  - { name: a, address: "127.0.0.1:$port_a", users: { app: app }, executor: a }
  - { name: b, address: "127.0.0.1:$port_b", users: { app: app }, executor: b }
executors:
  - { name: a, mode: single, data_source: a }
  - { name: b, mode: single, data_source: b }
data_sources:
  - { name: a, dsn: "mysql://root@127.0.0.1:$db_port/bank_a" }
  - { name: b, dsn: "mysql://root@127.0.0.1:$db_port/bank_b" }
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: ${BENCH_STORE_DIR:-$PWD/$work}/tandem.db }
YAML
target/release/tandem --config "$work/tandem.yaml" --log-level warn 2>"$work/tandem.log" &
tandem_pid=$!
wait_port "$port_a"
wait_port "$port_b"

export DIRECT_A="mysql://root@127.0.0.1:$db_port/bank_a"
export DIRECT_B="mysql://root@127.0.0.1:$db_port/bank_b"
export TANDEM_A="mysql://app:app@127.0.0.1:$port_a/bank_a"
export TANDEM_B="mysql://app:app@127.0.0.1:$port_b/bank_b"
export TANDEM_ADMIN="127.0.0.1:$admin_port"
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
t0=$(cpu $tandem_pid); m0=$(cpu $(cat $work/mariadb/pid))
# BENCH_PERF=tandem (or mariadb) profiles that process during the first global run.
if [ -n "${BENCH_PERF:-}" ]; then
  perf_pid=$tandem_pid
  [ "$BENCH_PERF" = mariadb ] && perf_pid=$(cat "$work/mariadb/pid")
  (sleep $((BENCH_SECONDS + 2)); perf record -F 499 -g -p "$perf_pid" -o "$work/perf.data" -- sleep $((BENCH_SECONDS - 1)) >/dev/null 2>&1) &
fi
cargo bench --bench transfer --quiet 2>/dev/null
echo "CPU seconds during the runs: tandem $(( ($(cpu $tandem_pid) - t0) / 100 )), mariadb $(( ($(cpu $(cat $work/mariadb/pid)) - m0) / 100 ))"
