#!/usr/bin/env bash
# Benchmarks Tandem against direct MariaDB in the same run, on this machine.
#
# sysbench oltp_point_select and oltp_read_write at 1 and 16 threads, direct and through
# Tandem, alternating; prints throughput and the Tandem/direct ratio for each. Then Tandem's
# resident memory with 1,000 idle client connections and while streaming 1,000,000 rows.
#
#   scripts/bench.sh                 # 20 s per run
#   BENCH_SECONDS=5 scripts/bench.sh # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${BENCH_SECONDS:-20}
scripts/setup.sh
cargo build --release --quiet

work="target/bench"
rm -rf "$work" && mkdir -p "$work"
db_port=$(free_port)
tandem_port=$(free_port)
admin_port=$(free_port)
scripts/mariadb.sh start "$work/mariadb" "$db_port"
tandem_pid=""
cleanup() {
  [ -n "$tandem_pid" ] && kill "$tandem_pid" 2>/dev/null && wait "$tandem_pid" 2>/dev/null
  scripts/mariadb.sh stop "$work/mariadb"
}
trap cleanup EXIT
mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "CREATE DATABASE sbtest"

cat >"$work/tandem.yaml" <<YAML
listeners:
  - name: bench
    address: 127.0.0.1:$tandem_port
    users: { sbtest: "sbtest" }
    executor: bench
executors:
  - name: bench
    mode: single
    data_source: db
data_sources:
  - name: db
    dsn: mysql://root@127.0.0.1:$db_port/sbtest
    pool: { max: 1100 }
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: $PWD/$work/tandem.db }
YAML
target/release/tandem --config "$work/tandem.yaml" --log-level warn 2>"$work/tandem.log" &
tandem_pid=$!
wait_port "$tandem_port"

common=(--tables=4 --table-size=10000 --mysql-host=127.0.0.1 --mysql-db=sbtest --db-ps-mode=auto)
direct=(--mysql-port="$db_port" --mysql-user=root)
proxied=(--mysql-port="$tandem_port" --mysql-user=sbtest --mysql-password=sbtest)
echo "== preparing sysbench tables (4 x 10,000 rows)"
sysbench oltp_read_write "${common[@]}" "${direct[@]}" prepare >/dev/null

# Prints the rate sysbench reports: queries/s for point selects, transactions/s otherwise.
run() {
  local workload=$1 threads=$2
  shift 2
  local out
  out=$(sysbench "$workload" "${common[@]}" "$@" --threads="$threads" --time="$seconds" --report-interval=0 run)
  echo "$out" | sysbench_rate "$workload"
}

printf '\n%-20s %7s %12s %12s %7s\n' workload threads direct tandem ratio
for workload in oltp_point_select oltp_read_write; do
  unit=tps
  [ "$workload" = oltp_point_select ] && unit=qps
  for threads in 1 16; do
    # Warm both paths, then alternate direct and Tandem twice and keep the sums.
    run "$workload" "$threads" "${direct[@]}" >/dev/null
    d=0 t=0
    for _ in 1 2; do
      d=$(echo "$d + $(run "$workload" "$threads" "${direct[@]}")" | bc -l)
      t=$(echo "$t + $(run "$workload" "$threads" "${proxied[@]}")" | bc -l)
    done
    printf '%-20s %7s %8.0f %3s %8.0f %3s %7.3f\n' "$workload" "$threads" \
      "$(echo "$d / 2" | bc -l)" "$unit" "$(echo "$t / 2" | bc -l)" "$unit" "$(echo "$t / $d" | bc -l)"
  done
done

rss() { awk '/VmRSS/ { print $2 }' "/proc/$tandem_pid/status"; }
echo
echo "== Tandem resident memory"
idle=$(rss)
echo "idle:                          $idle KiB"
target/py/bin/python scripts/bench_idle_clients.py "$tandem_port" 1000 "$work/idle.ready" &
holder=$!
for _ in $(seq 1 600); do [ -f "$work/idle.ready" ] && break; sleep 0.1; done
with_idle=$(rss)
echo "with 1,000 idle clients:       $with_idle KiB (+$(( (with_idle - idle) / 1024 )) MiB, $(( (with_idle - idle) / 1000 )) KiB per client)"
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null || true

mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot sbtest -e \
  "CREATE TABLE big (id INT PRIMARY KEY, pad VARCHAR(100)); INSERT INTO big SELECT seq, REPEAT('x', 100) FROM seq_1_to_1000000"
before=$(rss)
peak=$before
mariadb --no-defaults -h127.0.0.1 -P"$tandem_port" -usbtest -psbtest --quick sbtest \
  -e "SELECT * FROM big" >/dev/null &
streamer=$!
while kill -0 "$streamer" 2>/dev/null; do
  now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.02
done
wait "$streamer"
echo "streaming 1,000,000 rows:      peak $peak KiB (+$(( (peak - before) / 1024 )) MiB over $before KiB before)"
