#!/usr/bin/env bash
# Tandem's main job, end to end: a money transfer between two databases that commits as one,
# and one that rolls back as one.
#
# Starts a private MariaDB with two databases (bank_a, bank_b) and Tandem with a listener in
# front of each, then moves money with the ordinary `mariadb` client: one side joins the
# global transaction with an XID hint, the other with SET tandem_xid.
#
#   scripts/demo.sh                    # one Tandem, embedded coordinator store
#   DEMO_STORE=etcd scripts/demo.sh    # two Tandem sidecars, one per database, sharing an
#                                      # etcd member: each runs phase 2 of its own branch
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

scripts/setup.sh
echo "== building Tandem (release)"
cargo build --release --quiet

work="target/demo"
rm -rf "$work" && mkdir -p "$work"
db_port=$(free_port)
port_a=$(free_port)
port_b=$(free_port)
admin_port=$(free_port)
admin_b=$(free_port)
store=${DEMO_STORE:-embedded}

echo "== starting MariaDB on 127.0.0.1:$db_port with databases bank_a and bank_b"
scripts/mariadb.sh start "$work/mariadb" "$db_port"
tandem_pids=()
etcd_pid=""
cleanup() {
  for p in "${tandem_pids[@]}" $etcd_pid; do
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  scripts/mariadb.sh stop "$work/mariadb"
}
trap cleanup EXIT
for db in bank_a bank_b; do
  mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "
    CREATE DATABASE $db;
    CREATE TABLE $db.account (id INT PRIMARY KEY, owner VARCHAR(20), balance DECIMAL(10,2));"
done
mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "
  INSERT INTO bank_a.account VALUES (1, 'alice', 100.00);
  INSERT INTO bank_b.account VALUES (1, 'bob', 100.00);"

# One listener, executor and data source per database.
listener() { # name port
  cat <<YAML
  - name: $1
    address: 127.0.0.1:$2
    users: { app: "\${APP_PASSWORD}" }
    executor: $1
YAML
}
executor() { echo "  - { name: $1, mode: single, data_source: $1 }"; }
source_of() { echo "  - { name: $1, dsn: \"mysql://root@127.0.0.1:$db_port/$1\" }"; }
export APP_PASSWORD=demo-secret
start_tandem() { # config
  target/release/tandem check --config "$1"
  target/release/tandem --config "$1" 2>"${1%.yaml}.log" &
  tandem_pids+=($!)
}

if [ "$store" = etcd ]; then
  etcd_port=$(free_port)
  echo "== starting etcd on 127.0.0.1:$etcd_port"
  start_etcd "$work/etcd" "$etcd_port"
  for side in a b; do
    port=$port_a admin=$admin_port
    [ "$side" = b ] && port=$port_b admin=$admin_b
    {
      etcd_sidecar_yaml "bank_$side" "$port" '{ app: "${APP_PASSWORD}" }' \
        "mysql://root@127.0.0.1:$db_port/bank_$side" "$admin" "$etcd_port" /demo/ "sidecar-$side"
      echo "  default_timeout: 30s"
    } >"$work/tandem-$side.yaml"
    echo "== starting sidecar-$side: bank_$side on 127.0.0.1:$port, admin on $admin"
    start_tandem "$work/tandem-$side.yaml"
  done
else
  cat >"$work/tandem.yaml" <<YAML
listeners:
$(listener bank_a "$port_a")
$(listener bank_b "$port_b")
executors:
$(executor bank_a)
$(executor bank_b)
data_sources:
$(source_of bank_a)
$(source_of bank_b)
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: $PWD/$work/tandem.db }
  default_timeout: 30s
YAML
  echo "== starting Tandem: bank_a on 127.0.0.1:$port_a, bank_b on 127.0.0.1:$port_b, admin on $admin_port"
  start_tandem "$work/tandem.yaml"
fi
wait_port "$port_a"
wait_port "$port_b"

# The mariadb client drops comments unless told to keep them (--comments): the XID hint is one.
sql() {
  local port=$1
  shift
  echo "  [$([ "$port" = "$port_a" ] && echo bank_a || echo bank_b)] $*" >&2
  mariadb --no-defaults --comments -h127.0.0.1 -P"$port" -uapp -p"$APP_PASSWORD" -N -B \
    "$([ "$port" = "$port_a" ] && echo bank_a || echo bank_b)" -e "$*"
}
balances() {
  mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -N -B -e "
    SELECT CONCAT('   alice (bank_a): ', balance) FROM bank_a.account WHERE id = 1;
    SELECT CONCAT('   bob   (bank_b): ', balance) FROM bank_b.account WHERE id = 1;"
}
echo "== balances before"
balances

transfer() {
  local amount=$1
  xid=$(sql "$port_a" "SELECT tandem_begin()")
  echo "  global transaction $xid" >&2
  sql "$port_a" "/*+ XID('$xid') */ UPDATE account SET balance = balance - $amount WHERE id = 1"
  sql "$port_b" "SET tandem_xid = '$xid'; BEGIN; UPDATE account SET balance = balance + $amount WHERE id = 1; COMMIT"
}

echo "== transfer 25.00 from alice to bob, then commit"
transfer 25
echo "  -> $(sql "$port_a" "SELECT tandem_commit('$xid')")"
balances

echo "== transfer 40.00 from alice to bob, then roll back"
transfer 40
echo "  (before the rollback each database already holds its half:)"
balances
echo "  -> $(sql "$port_b" "SELECT tandem_rollback('$xid')")"
balances

if [ "$store" = etcd ]; then
  echo "== the sidecars and the data sources each owns (admin API, /v1/cluster)"
  curl -s "http://127.0.0.1:$admin_port/v1/cluster"; echo
fi
echo "== the coordinator's record (admin API)"
# Each sidecar finishes its own branch as it sees the decision: give the last one a moment.
sleep 0.5
curl -s "http://127.0.0.1:$admin_port/v1/transactions"; echo
echo "== stopping (SIGTERM drains and exits 0)"
for p in "${tandem_pids[@]}"; do
  kill -TERM "$p"
  wait "$p" && echo "tandem exited with status 0"
done
tandem_pids=()
