#!/usr/bin/env bash
# Sharding against its floor, in one interleaved run on this machine.
#
# One MariaDB holds sysbench's tables twice: whole in database `sbtest`, and split by `id`
# mod 4 over databases sb0 … sb3. sysbench oltp_point_select (1 and 16 threads, text and
# prepared) and oltp_read_write (16 threads, text) run direct to MariaDB, through an L4 hop
# (HAProxy, mode tcp: the floor any proxy pays), through Tandem `single` (sbtest) and
# through Tandem `sharding` (the four shards). Point selects stay on one shard; read_write's
# range queries scatter over all four, and each of its transactions writes on several
# shards, so commits in two phases. Its DISTINCT range query is left out for every target
# (--distinct_ranges=0): DISTINCT of a column other than the sharding one across shards is
# refused. Prints each rate and the ratios sharding/single and sharding/HAProxy.
#
# Then a scatter ORDER BY … LIMIT query's latency (single vs sharding), and Tandem's memory
# while one client streams 1,000,000 rows merged from the four shards.
#
#   scripts/bench_sharding.sh                 # 10 s per run
#   BENCH_SECONDS=3 scripts/bench_sharding.sh # quicker, noisier
#   BENCH_CASES="oltp_read_write 16" BENCH_REPORT_INTERVAL=1 scripts/bench_sharding.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${BENCH_SECONDS:-10}
scripts/setup.sh
cargo build --release --quiet

work="target/bench-sharding"
rm -rf "$work" && mkdir -p "$work"
db_port=$(free_port) haproxy_port=$(free_port) single_port=$(free_port)
shard_port=$(free_port) admin_port=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  scripts/mariadb.sh stop "$work/db"
}
trap cleanup EXIT
scripts/mariadb.sh start "$work/db" "$db_port"
sql() { mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot "$@"; }
sql -e "CREATE DATABASE sbtest; CREATE DATABASE sb0; CREATE DATABASE sb1; CREATE DATABASE sb2; CREATE DATABASE sb3"

cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen db
  bind 127.0.0.1:$haproxy_port
  server db 127.0.0.1:$db_port
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)

common=(--tables=4 --table-size=10000 --mysql-db=sbtest)
echo "== preparing sysbench tables (4 x 10,000 rows), and their copies split over 4 shards"
sysbench oltp_read_write "${common[@]}" --mysql-host=127.0.0.1 --mysql-port="$db_port" \
  --mysql-user=root prepare >/dev/null
for i in 0 1 2 3; do
  for t in 1 2 3 4; do
    sql -e "CREATE TABLE sb$i.sbtest$t LIKE sbtest.sbtest$t;
            INSERT INTO sb$i.sbtest$t SELECT * FROM sbtest.sbtest$t WHERE id % 4 = $i"
  done
  # The streaming test's table: 1,000,000 rows over the four shards.
  sql -D "sb$i" -e "CREATE TABLE sb$i.big (id INT PRIMARY KEY, body VARCHAR(100));
          INSERT INTO sb$i.big SELECT seq, REPEAT('x', 100) FROM seq_0_to_999999 WHERE seq % 4 = $i"
done

sharded=""
for t in 1 2 3 4; do sharded+="      - { table: sbtest$t, column: id, algorithm: mod }"$'\n'; done
cat >"$work/tandem.yaml" <<YAML
listeners:
  - { name: single, address: "127.0.0.1:$single_port", users: { sbtest: sbtest }, executor: single }
  - { name: shard, address: "127.0.0.1:$shard_port", users: { sbtest: sbtest }, executor: sbtest }
executors:
  - { name: single, mode: single, data_source: whole }
  - name: sbtest
    mode: sharding
    database: sbtest
    shards: [sb0, sb1, sb2, sb3]
    sharded_tables:
$sharded      - { table: big, column: id, algorithm: mod }
data_sources:
  - { name: whole, dsn: "mysql://root@127.0.0.1:$db_port/sbtest", pool: { max: 200 } }
  - { name: sb0, dsn: "mysql://root@127.0.0.1:$db_port/sb0", pool: { max: 200 } }
  - { name: sb1, dsn: "mysql://root@127.0.0.1:$db_port/sb1", pool: { max: 200 } }
  - { name: sb2, dsn: "mysql://root@127.0.0.1:$db_port/sb2", pool: { max: 200 } }
  - { name: sb3, dsn: "mysql://root@127.0.0.1:$db_port/sb3", pool: { max: 200 } }
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: $PWD/$work/tandem.db }
YAML
target/release/tandem --config "$work/tandem.yaml" --log-level warn 2>"$work/tandem.log" &
tandem_pid=$!
pids+=($tandem_pid)
wait_port "$single_port"
wait_port "$shard_port"
wait_port "$haproxy_port"

tcp="--mysql-host=127.0.0.1"
tandem_user="--mysql-user=sbtest --mysql-password=sbtest"
declare -A target=(
  [direct]="$tcp --mysql-port=$db_port --mysql-user=root"
  [haproxy]="$tcp --mysql-port=$haproxy_port --mysql-user=root"
  [single]="$tcp --mysql-port=$single_port $tandem_user"
  [sharding]="$tcp --mysql-port=$shard_port $tandem_user"
  [floor]="$tcp --mysql-port=$db_port --mysql-user=root"
)

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$tandem_pid/status"; }

echo
echo "Memory while one client streams 1,000,000 rows merged from 4 shards (ORDER BY id):"
before=$(rss_kib)
peak=$before
target/py/bin/python - "$shard_port" <<'PY' &
import sys, pymysql, pymysql.cursors
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="sbtest", password="sbtest",
                    database="sbtest", cursorclass=pymysql.cursors.SSCursor)
cur = c.cursor()
cur.execute("SELECT id, body FROM big ORDER BY id")
n = 0
last = -1
for row in cur:
    assert row[0] > last
    last = row[0]
    n += 1
print(f"  rows streamed in order: {n}")
PY
streamer=$!
while kill -0 "$streamer" 2>/dev/null; do
  now=$(rss_kib)
  ((now > peak)) && peak=$now
  sleep 0.05
done
wait "$streamer"
echo "  Tandem RSS before: $((before / 1024)) MiB, peak while streaming: $((peak / 1024)) MiB"

# Prints the rate sysbench reports: queries/s for point selects, transactions/s otherwise.
run() {
  local workload=$1 threads=$2 where=$3 ps=${4:-disable} out script=$1
  # The floor: the shards' own statements for the workload, sent straight to MariaDB.
  [[ $where == floor ]] && script=benches/sharding_floor.lua
  # shellcheck disable=SC2086
  out=$(sysbench "$script" "${common[@]}" ${target[$where]} --threads="$threads" \
    --db-ps-mode="$ps" --distinct_ranges=0 --time="$seconds" \
    --report-interval="${BENCH_REPORT_INTERVAL:-0}" run)
  # BENCH_REPORT_INTERVAL=1: sysbench's per-second rates, on stderr (stalls show there).
  [[ ${BENCH_REPORT_INTERVAL:-0} != 0 ]] && echo "$where: $out" | grep -E "^\S+: |\] thds" >&2
  if echo "$out" | grep -q "FATAL"; then
    echo "$out" | grep -m3 "FATAL" >&2
  fi
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

printf '\n%-24s %3s %9s %9s %9s %9s %16s %16s\n' workload thr direct haproxy single sharding sharding/single sharding/haproxy
cases="oltp_point_select 1,oltp_point_select 16,oltp_point_select 16 ps,oltp_read_write 16"
IFS=, read -r -a main_cases <<<"${BENCH_CASES:-$cases}"
for case in "${main_cases[@]}"; do
  read -r workload threads ps <<<"$case"
  ps=${ps:+auto}
  floor=""
  [[ $workload == oltp_read_write && -z $ps ]] && floor=floor
  measure "$workload" "$threads" "${ps:-disable}" direct haproxy single sharding $floor
  printf '%-24s %3s %9.0f %9.0f %9.0f %9.0f %16.3f %16.3f\n' "$workload${ps:+ (ps)}" "$threads" \
    "${mean[direct]}" "${mean[haproxy]}" "${mean[single]}" "${mean[sharding]}" \
    "$(echo "${mean[sharding]} / ${mean[single]}" | bc -l)" \
    "$(echo "${mean[sharding]} / ${mean[haproxy]}" | bc -l)"
  if [[ -n $floor ]]; then
    # What the shards must do for these transactions (benches/sharding_floor.lua): the
    # best any sharding proxy could reach here.
    printf '  floor (the shards'"'"' own statements, direct): %.0f tps; floor/single %.3f, sharding/floor %.3f\n' \
      "${mean[floor]}" "$(echo "${mean[floor]} / ${mean[single]}" | bc -l)" \
      "$(echo "${mean[sharding]} / ${mean[floor]}" | bc -l)"
  fi
done

echo
echo "Scatter ORDER BY … LIMIT latency (one client, 500 queries each, ms):"
target/py/bin/python - "$single_port" "$shard_port" <<'PY'
import random, statistics, sys, time, pymysql
sql = "SELECT id, k, c FROM sbtest1 WHERE k > %s ORDER BY k, id LIMIT 10"
for name, port in (("single", sys.argv[1]), ("sharding", sys.argv[2])):
    c = pymysql.connect(host="127.0.0.1", port=int(port), user="sbtest", password="sbtest",
                        database="sbtest")
    cur = c.cursor()
    times = []
    for i in range(500):
        t = time.perf_counter()
        cur.execute(sql % random.randint(4000, 6000))
        cur.fetchall()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"  {name:9} median {statistics.median(times):.3f}  p95 {times[int(len(times) * 0.95)]:.3f}")
PY
echo
echo "store writes (coordinator):"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E '^tandem_(store_writes|global_transactions)' | head -5 || true
