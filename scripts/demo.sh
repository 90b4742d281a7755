#!/usr/bin/env bash
# Tandem's main job, end to end: a money transfer between two databases that commits as one,
# and one that rolls back as one.
#
# Starts a private MariaDB with two databases (bank_a, bank_b) and Tandem with a listener in
# front of each, then moves money with the ordinary `mariadb` client: one side joins the
# global transaction with an XID hint, the other with SET tandem_xid.
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

echo "== starting MariaDB on 127.0.0.1:$db_port with databases bank_a and bank_b"
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
    CREATE TABLE $db.account (id INT PRIMARY KEY, owner VARCHAR(20), balance DECIMAL(10,2));"
done
mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "
  INSERT INTO bank_a.account VALUES (1, 'alice', 100.00);
  INSERT INTO bank_b.account VALUES (1, 'bob', 100.00);"

cat >"$work/tandem.yaml" <<YAML
listeners:
  - name: bank_a
    address: 127.0.0.1:$port_a
    users: { app: "\${APP_PASSWORD}" }
    executor: bank_a
  - name: bank_b
    address: 127.0.0.1:$port_b
    users: { app: "\${APP_PASSWORD}" }
    executor: bank_b
executors:
  - { name: bank_a, mode: single, data_source: bank_a }
  - { name: bank_b, mode: single, data_source: bank_b }
data_sources:
  - { name: bank_a, dsn: "mysql://root@127.0.0.1:$db_port/bank_a" }
  - { name: bank_b, dsn: "mysql://root@127.0.0.1:$db_port/bank_b" }
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: $PWD/$work/tandem.db }
  default_timeout: 30s
YAML
export APP_PASSWORD=demo-secret
target/release/tandem check --config "$work/tandem.yaml"
echo "== starting Tandem: bank_a on 127.0.0.1:$port_a, bank_b on 127.0.0.1:$port_b, admin on $admin_port"
target/release/tandem --config "$work/tandem.yaml" 2>"$work/tandem.log" &
tandem_pid=$!
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

echo "== the coordinator's record (admin API)"
curl -s "http://127.0.0.1:$admin_port/v1/transactions"; echo
echo "== stopping (SIGTERM drains and exits 0)"
kill -TERM "$tandem_pid"
wait "$tandem_pid" && echo "tandem exited with status 0"
tandem_pid=""
