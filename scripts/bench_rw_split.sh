#!/usr/bin/env bash
# Read/write splitting against its floor, in one interleaved run on this machine.
#
# A MariaDB primary and one GTID replica; sysbench oltp_point_select and oltp_read_only at
# 1 and 16 threads, and oltp_read_write at 16: direct to the primary, through an L4 hop
# (HAProxy, mode tcp: the floor any proxy pays), through Tandem `single` (the primary) and
# through Tandem `rw_split` (reads to the replica). Text protocol (--db-ps-mode=disable),
# and point selects prepared too ("ps"), which rw_split routes the same. On two shared cores
# a replica adds no capacity: the figure is what routing costs. Prints each rate and the
# ratios rw_split/single and Tandem/HAProxy.
#
# Then what read-your-writes costs (scripts/ryw_latency.py), and Unix sockets: Tandem `single` with the client's side, the database's side or both on
# a Unix socket instead of loopback TCP, against TCP on both, and HAProxy the same way.
#
#   scripts/bench_rw_split.sh                 # 10 s per run
#   BENCH_SECONDS=3 scripts/bench_rw_split.sh # quicker, noisier
#   BENCH_CASES="oltp_point_select 1" scripts/bench_rw_split.sh  # only these main-table cases
#                                             # (comma-separated), nothing else
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
sock_port=$(free_port) nowait_port=$(free_port)
abs="$PWD/$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
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
listen primary_sockets
  bind $abs/haproxy.sock
  server primary $abs/primary/sock
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)

cat >"$work/tandem.yaml" <<YAML
listeners:
  - { name: single, address: "127.0.0.1:$single_port", users: { sbtest: sbtest }, executor: single }
  - { name: split, address: "127.0.0.1:$split_port", users: { sbtest: sbtest }, executor: split }
  - { name: split_nowait, address: "127.0.0.1:$nowait_port", users: { sbtest: sbtest }, executor: split_nowait }
  - { name: unix_tcp, address: "unix:$abs/single.sock", users: { sbtest: sbtest }, executor: single }
  - { name: tcp_unix, address: "127.0.0.1:$sock_port", users: { sbtest: sbtest }, executor: over_socket }
  - { name: unix_unix, address: "unix:$abs/over_socket.sock", users: { sbtest: sbtest }, executor: over_socket }
executors:
  - { name: single, mode: single, data_source: primary }
  - { name: over_socket, mode: single, data_source: primary_socket }
  - name: split_nowait
    mode: rw_split
    primary: primary
    replicas: [{ data_source: replica }]
    read_your_writes: false
  - name: split
    mode: rw_split
    primary: primary
    replicas: [{ data_source: replica }]
data_sources:
  - { name: primary, dsn: "mysql://root@127.0.0.1:$primary/sbtest", pool: { max: 200 } }
  - { name: replica, dsn: "mysql://root@127.0.0.1:$replica/sbtest", pool: { max: 200 } }
  - { name: primary_socket, dsn: "mysql://root@127.0.0.1:$primary/sbtest?socket=$abs/primary/sock", pool: { max: 200 } }
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
wait_port "$sock_port"
wait_port "$nowait_port"

common=(--tables=4 --table-size=10000 --mysql-db=sbtest)
tcp="--mysql-host=127.0.0.1"
# libmariadb takes the socket only for host localhost.
unix="--mysql-host=localhost --mysql-socket"
tandem_user="--mysql-user=sbtest --mysql-password=sbtest"
declare -A target=(
  [direct]="$tcp --mysql-port=$primary --mysql-user=root"
  [haproxy]="$tcp --mysql-port=$haproxy_port --mysql-user=root"
  [single]="$tcp --mysql-port=$single_port $tandem_user"
  [rw_split]="$tcp --mysql-port=$split_port $tandem_user"
  [tandem_unix_tcp]="$unix=$abs/single.sock $tandem_user"
  [tandem_tcp_unix]="$tcp --mysql-port=$sock_port $tandem_user"
  [tandem_unix_unix]="$unix=$abs/over_socket.sock $tandem_user"
  [haproxy_unix_unix]="$unix=$abs/haproxy.sock --mysql-user=root"
)
echo "== preparing sysbench tables (4 x 10,000 rows)"
# shellcheck disable=SC2086
sysbench oltp_read_write "${common[@]}" ${target[direct]} prepare >/dev/null
mariadb --no-defaults -h127.0.0.1 -P"$replica" -uroot -e \
  "SELECT MASTER_GTID_WAIT('$(mariadb --no-defaults -h127.0.0.1 -P"$primary" -uroot -N -e 'SELECT @@gtid_binlog_pos')', 60)" >/dev/null

# Prints the rate sysbench reports: queries/s for point selects, transactions/s otherwise.
run() {
  local workload=$1 threads=$2 where=$3 ps=${4:-disable} out
  # shellcheck disable=SC2086
  out=$(sysbench "$workload" "${common[@]}" ${target[$where]} --threads="$threads" \
    --db-ps-mode="$ps" --time="$seconds" --report-interval=0 run)
  echo "$out" | sysbench_rate "$workload"
}

# The mean of two interleaved runs of each target, for one case.
declare -A mean
measure() {
  local workload=$1 threads=$2 ps=$3 where
  shift 3
  declare -A sum=()
  for where in "$@"; do sum[$where]=0; done
  for _ in 1 2; do
    for where in "$@"; do
      sum[$where]=$(echo "${sum[$where]} + $(run "$workload" "$threads" "$where" "$ps")" | bc -l)
    done
  done
  for where in "$@"; do mean[$where]=$(echo "${sum[$where]} / 2" | bc -l); done
}

printf '\n%-22s %3s %9s %9s %9s %9s %14s %14s\n' workload thr direct haproxy single rw_split rw_split/single tandem/haproxy
cases="oltp_point_select 1,oltp_point_select 16,oltp_point_select 16 ps,oltp_read_only 1,oltp_read_only 16,oltp_read_write 16"
IFS=, read -r -a main_cases <<<"${BENCH_CASES:-$cases}"
for case in "${main_cases[@]}"; do
  read -r workload threads ps <<<"$case"
  ps=${ps:+auto}
  run "$workload" "$threads" direct "${ps:-disable}" >/dev/null
  measure "$workload" "$threads" "${ps:-disable}" direct haproxy single rw_split
  printf '%-22s %3s %9.0f %9.0f %9.0f %9.0f %14.3f %14.3f\n' "$workload${ps:+ (ps)}" "$threads" \
    "${mean[direct]}" "${mean[haproxy]}" "${mean[single]}" "${mean[rw_split]}" \
    "$(echo "${mean[rw_split]} / ${mean[single]}" | bc -l)" \
    "$(echo "${mean[rw_split]} / ${mean[haproxy]}" | bc -l)"
done

[[ -n ${BENCH_CASES:-} ]] && exit 0
echo
echo "Unix sockets (client side / database side), Tandem single and HAProxy, against TCP on both:"
printf '%-18s %3s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n' workload thr tcp/tcp unix/tcp tcp/unix unix/unix \
  ratio ratio ratio haproxy hap_unix
for case in "oltp_point_select 1" "oltp_point_select 16" "oltp_read_only 16"; do
  read -r workload threads <<<"$case"
  measure "$workload" "$threads" disable single tandem_unix_tcp tandem_tcp_unix tandem_unix_unix \
    haproxy haproxy_unix_unix
  printf '%-18s %3s %9.0f %9.0f %9.0f %9.0f %9.3f %9.3f %9.3f %9.0f %9.3f\n' "$workload" "$threads" \
    "${mean[single]}" "${mean[tandem_unix_tcp]}" "${mean[tandem_tcp_unix]}" "${mean[tandem_unix_unix]}" \
    "$(echo "${mean[tandem_unix_tcp]} / ${mean[single]}" | bc -l)" \
    "$(echo "${mean[tandem_tcp_unix]} / ${mean[single]}" | bc -l)" \
    "$(echo "${mean[tandem_unix_unix]} / ${mean[single]}" | bc -l)" \
    "${mean[haproxy]}" "$(echo "${mean[haproxy_unix_unix]} / ${mean[haproxy]}" | bc -l)"
done
echo "(ratio: unix/tcp, tcp/unix and unix/unix against tcp/tcp; hap_unix: HAProxy on sockets against HAProxy on TCP)"
echo
echo "Read-your-writes: a write, the read right after it, and the next read (µs), one client:"
target/py/bin/python scripts/ryw_latency.py "$split_port" "$nowait_port" 2000

echo
echo "reads per backend (rw_split listener):"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep '^tandem_reads_total' || true
