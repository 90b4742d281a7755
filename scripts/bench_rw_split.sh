#!/usr/bin/env bash
# Read/write splitting against its floor, in one interleaved run on this machine.
#
# A MariaDB primary and one GTID replica; sysbench oltp_point_select and oltp_read_only at
# 1 and 16 threads, and oltp_read_write at 16: direct to the primary, through an L4 hop
# (HAProxy, mode tcp: the floor any proxy pays), through Tandem `single` (the primary) and
# through Tandem `rw_split` (reads to the replica). Text protocol (--db-ps-mode=disable), so
# rw_split routes every read. On two shared cores a replica adds no capacity: the figure is
# what routing costs. Prints each rate and the ratios rw_split/single and Tandem/HAProxy.
#
#   scripts/bench_rw_split.sh                 # 10 s per run
#   BENCH_SECONDS=3 scripts/bench_rw_split.sh # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${BENCH_SECONDS:-10}
scripts/setup.sh
cargo build --release --quiet

work="target/bench-rw-split"
rm -rf "$work" && mkdir -p "$work"
primary=$(free_port) replica=$(free_port) haproxy_port=$(free_port)
single_port=$(free_port) split_port=$(free_port) admin_port=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  scripts/mariadb.sh stop "$work/replica"
  scripts/mariadb.sh stop "$work/primary"
}
trap cleanup EXIT
scripts/mariadb.sh start-primary "$work/primary" "$primary"
scripts/mariadb.sh start-replica "$work/replica" "$replica" "$primary"
mariadb --no-defaults -h127.0.0.1 -P"$primary" -uroot -e "CREATE DATABASE sbtest"

cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen primary
  bind 127.0.0.1:$haproxy_port
  server primary 127.0.0.1:$primary
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)

cat >"$work/tandem.yaml" <<YAML
listeners:
  - { name: single, address: "127.0.0.1:$single_port", users: { sbtest: sbtest }, executor: single }
  - { name: split, address: "127.0.0.1:$split_port", users: { sbtest: sbtest }, executor: split }
executors:
  - { name: single, mode: single, data_source: primary }
  - name: split
    mode: rw_split
    primary: primary
    replicas: [{ data_source: replica }]
data_sources:
  - { name: primary, dsn: "mysql://root@127.0.0.1:$primary/sbtest", pool: { max: 200 } }
  - { name: replica, dsn: "mysql://root@127.0.0.1:$replica/sbtest", pool: { max: 200 } }
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: $PWD/$work/tandem.db }
YAML
target/release/tandem --config "$work/tandem.yaml" --log-level warn 2>"$work/tandem.log" &
pids+=($!)
wait_port "$single_port"
wait_port "$split_port"
wait_port "$haproxy_port"

common=(--tables=4 --table-size=10000 --mysql-host=127.0.0.1 --mysql-db=sbtest --db-ps-mode=disable)
declare -A target=(
  [direct]="--mysql-port=$primary --mysql-user=root"
  [haproxy]="--mysql-port=$haproxy_port --mysql-user=root"
  [single]="--mysql-port=$single_port --mysql-user=sbtest --mysql-password=sbtest"
  [rw_split]="--mysql-port=$split_port --mysql-user=sbtest --mysql-password=sbtest"
)
echo "== preparing sysbench tables (4 x 10,000 rows)"
# shellcheck disable=SC2086
sysbench oltp_read_write "${common[@]}" ${target[direct]} prepare >/dev/null
mariadb --no-defaults -h127.0.0.1 -P"$replica" -uroot -e \
  "SELECT MASTER_GTID_WAIT('$(mariadb --no-defaults -h127.0.0.1 -P"$primary" -uroot -N -e 'SELECT @@gtid_binlog_pos')', 60)" >/dev/null

# Prints the rate sysbench reports: queries/s for point selects, transactions/s otherwise.
run() {
  local workload=$1 threads=$2 where=$3 out
  # shellcheck disable=SC2086
  out=$(sysbench "$workload" "${common[@]}" ${target[$where]} --threads="$threads" \
    --time="$seconds" --report-interval=0 run)
  echo "$out" | sysbench_rate "$workload"
}

printf '\n%-18s %3s %9s %9s %9s %9s %14s %14s\n' workload thr direct haproxy single rw_split rw_split/single tandem/haproxy
for case in "oltp_point_select 1" "oltp_point_select 16" "oltp_read_only 1" "oltp_read_only 16" "oltp_read_write 16"; do
  read -r workload threads <<<"$case"
  run "$workload" "$threads" direct >/dev/null
  declare -A sum=([direct]=0 [haproxy]=0 [single]=0 [rw_split]=0)
  for _ in 1 2; do
    for where in direct haproxy single rw_split; do
      sum[$where]=$(echo "${sum[$where]} + $(run "$workload" "$threads" "$where")" | bc -l)
    done
  done
  printf '%-18s %3s %9.0f %9.0f %9.0f %9.0f %14.3f %14.3f\n' "$workload" "$threads" \
    "$(echo "${sum[direct]} / 2" | bc -l)" "$(echo "${sum[haproxy]} / 2" | bc -l)" \
    "$(echo "${sum[single]} / 2" | bc -l)" "$(echo "${sum[rw_split]} / 2" | bc -l)" \
    "$(echo "${sum[rw_split]} / ${sum[single]}" | bc -l)" \
    "$(echo "${sum[rw_split]} / ${sum[haproxy]}" | bc -l)"
done
echo
echo "reads per backend (rw_split listener):"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep '^tandem_reads_total' || true
