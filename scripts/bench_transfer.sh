#!/usr/bin/env bash
# The global-transaction benchmark: transfers between two databases at 16 clients through
# Tandem, against the same two updates as plain local transactions straight to MariaDB, in
# one run. Prints transfers per second, the ratio, latency, and store writes per transaction;
# also the statements AT mode needs sent straight to MariaDB (the ceiling for any AT
# implementation on this machine), and each process's CPU time per transfer in each run.
#
#   scripts/bench_transfer.sh                      # one Tandem, embedded store, 15 s per run
#   BENCH_SECONDS=5 scripts/bench_transfer.sh
#   BENCH_STORE=etcd scripts/bench_transfer.sh     # two sidecars (one per database) sharing
#                                                  # an etcd member; prints etcd writes
#   BENCH_TANDEM_ENV="env TOKIO_WORKER_THREADS=1" scripts/bench_transfer.sh
#                                                  # a command that Tandem is started under
#
# MariaDB runs with its production default durability (innodb_flush_log_at_trx_commit=1),
# as the coordinator's own store syncs its decisions to disk; set
# MARIADB_FLUSH_LOG_AT_TRX_COMMIT=2 to compare against a database that does not.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

export BENCH_SECONDS=${BENCH_SECONDS:-15}
export BENCH_CLIENTS=${BENCH_CLIENTS:-16}
store=${BENCH_STORE:-embedded}
scripts/setup.sh
cargo build --release --quiet
cargo bench --no-run --bench transfer --quiet 2>/dev/null

work="target/bench-transfer"
# A server an interrupted run left behind would keep running on its old port.
[ -f "$work/mariadb/pid" ] && scripts/mariadb.sh stop "$work/mariadb"
rm -rf "$work" && mkdir -p "$work"
db_port=$(free_port)
port_a=$(free_port)
port_b=$(free_port)
admin_a=$(free_port)
admin_b=$(free_port)
MARIADB_FLUSH_LOG_AT_TRX_COMMIT=${MARIADB_FLUSH_LOG_AT_TRX_COMMIT:-1} \
  scripts/mariadb.sh start "$work/mariadb" "$db_port"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
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

# One listener and data source per database; $1 names which (a, b, or both).
listener() { echo "  - { name: $1, address: \"127.0.0.1:$2\", users: { app: app }, executor: $1 }"; }
executor() { echo "  - { name: $1, mode: single, data_source: $1 }"; }
source_of() { echo "  - { name: $1, dsn: \"mysql://root@127.0.0.1:$db_port/bank_$1\" }"; }
tandem_pids=()
start_tandem() { # name config
  ${BENCH_TANDEM_ENV:-} target/release/tandem --config "$2" --log-level warn 2>"$work/$1.log" &
  pids+=($!)
  tandem_pids+=($!)
}

if [ "$store" = etcd ]; then
  etcd_port=$(free_port)
  start_etcd "$work/etcd" "$etcd_port"
  pids+=("$etcd_pid")
  for side in a b; do
    port=$port_a admin=$admin_a
    [ "$side" = b ] && port=$port_b admin=$admin_b
    etcd_sidecar_yaml "$side" "$port" "{ app: app }" "mysql://root@127.0.0.1:$db_port/bank_$side" \
      "$admin" "$etcd_port" /bench/ "sidecar-$side" >"$work/tandem-$side.yaml"
    start_tandem "tandem-$side" "$work/tandem-$side.yaml"
  done
  export TANDEM_B_ADMIN="127.0.0.1:$admin_b"
else
  cat >"$work/tandem.yaml" <<YAML
listeners:
$(listener a "$port_a")
$(listener b "$port_b")
executors:
$(executor a)
$(executor b)
data_sources:
$(source_of a)
$(source_of b)
admin:
  address: 127.0.0.1:$admin_a
coordinator:
  embedded: { path: ${BENCH_STORE_DIR:-$PWD/$work}/tandem.db }
YAML
  start_tandem tandem "$work/tandem.yaml"
fi
wait_port "$port_a"
wait_port "$port_b"

export DIRECT_A="mysql://root@127.0.0.1:$db_port/bank_a"
export DIRECT_B="mysql://root@127.0.0.1:$db_port/bank_b"
export TANDEM_A="mysql://app:app@127.0.0.1:$port_a/bank_a"
export TANDEM_B="mysql://app:app@127.0.0.1:$port_b/bank_b"
export TANDEM_ADMIN="127.0.0.1:$admin_a"
revision() {
  ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" endpoint status -w json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}
# etcd's own count of the gRPC calls it answered, one "method count" line per method.
grpc_calls() {
  curl -s "http://127.0.0.1:$etcd_port/metrics" |
    awk -F'[{}]' '/^grpc_server_handled_total/ { split($2, l, ","); for (i in l) if (l[i] ~ /grpc_method=/) { m = l[i]; gsub(/grpc_method=|"/, "", m) } n[m] += $3 } END { for (m in n) print m, n[m] }'
}
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tandem_cpu() { local t=0; for p in "${tandem_pids[@]}"; do t=$((t + $(cpu "$p"))); done; echo $t; }
t0=$(tandem_cpu); m0=$(cpu "$(cat $work/mariadb/pid)")
[ "$store" = etcd ] && r0=$(revision) && e0=$(cpu "$etcd_pid") && grpc_calls >"$work/grpc0.txt"
# BENCH_PERF=tandem (or mariadb, or etcd) profiles that process during the first global run.
if [ -n "${BENCH_PERF:-}" ]; then
  perf_pid=${tandem_pids[0]}
  [ "$BENCH_PERF" = mariadb ] && perf_pid=$(cat "$work/mariadb/pid")
  [ "$BENCH_PERF" = etcd ] && perf_pid=$etcd_pid
  (sleep $((2 * BENCH_SECONDS + 2)); perf record -F 499 -g -p "$perf_pid" -o "$work/perf.data" -- sleep $((BENCH_SECONDS - 1)) >/dev/null 2>&1) &
fi
BENCH_PROCESSES="mariadb=$(cat "$work/mariadb/pid")"
for i in "${!tandem_pids[@]}"; do BENCH_PROCESSES+=" tandem-$((i + 1))=${tandem_pids[$i]}"; done
[ "$store" = etcd ] && BENCH_PROCESSES+=" etcd=$etcd_pid"
export BENCH_PROCESSES
cargo bench --bench transfer --quiet 2>/dev/null | tee "$work/result.txt"
if [ "$store" = etcd ]; then
  sleep 3 # let phase 2 of the last transactions land
  begun=$(awk '/global transactions begun/ {print $4}' "$work/result.txt")
  writes=$(( $(revision) - r0 ))
  echo "etcd write transactions (revisions) per global transaction: $(echo "scale=2; $writes / $begun" | bc) ($writes; group commit puts several store writes in one)"
  echo "etcd CPU seconds during the runs: $(( ($(cpu "$etcd_pid") - e0) / 100 ))"
  grpc_calls >"$work/grpc1.txt"
  echo "etcd calls per global transaction:$(awk -v begun="$begun" 'NR == FNR { a[$1] = $2; next }
    { d = $2 - a[$1]; if (d > 0) printf " %s %.2f", $1, d / begun }' "$work/grpc0.txt" "$work/grpc1.txt")"
fi
echo "CPU seconds during the runs: tandem $(( ($(tandem_cpu) - t0) / 100 )), mariadb $(( ($(cpu "$(cat $work/mariadb/pid)") - m0) / 100 ))"
echo "Tandem memory after the runs (RSS): $(for p in "${tandem_pids[@]}"; do awk '/VmRSS/ {printf "%d MiB ", $2 / 1024}' "/proc/$p/status"; done)"
