#!/usr/bin/env bash
# Tandem's main job, end to end: starts a private MariaDB and Tandem in front of it, then runs
# a client session through Tandem with the ordinary `mariadb` client, and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

scripts/setup.sh
echo "== building Tandem (release)"
cargo build --release --quiet

work="target/demo"
rm -rf "$work" && mkdir -p "$work"
db_port=$(free_port)
tandem_port=$(free_port)
admin_port=$(free_port)

echo "== starting MariaDB on 127.0.0.1:$db_port"
scripts/mariadb.sh start "$work/mariadb" "$db_port"
tandem_pid=""
cleanup() {
  [ -n "$tandem_pid" ] && kill "$tandem_pid" 2>/dev/null && wait "$tandem_pid" 2>/dev/null
  scripts/mariadb.sh stop "$work/mariadb"
}
trap cleanup EXIT
mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "CREATE DATABASE shop"

cat >"$work/tandem.yaml" <<YAML
listeners:
  - name: shop
    address: 127.0.0.1:$tandem_port
    users: { app: "\${APP_PASSWORD}" }
    executor: shop
executors:
  - name: shop
    mode: single
    data_source: shop_db
data_sources:
  - name: shop_db
    dsn: mysql://root@127.0.0.1:$db_port/shop
    pool: { max: 16, idle_timeout: 60s }
admin:
  address: 127.0.0.1:$admin_port
coordinator:
  embedded: { path: $PWD/$work/tandem.db }
YAML
export APP_PASSWORD=demo-secret
target/release/tandem check --config "$work/tandem.yaml"
echo "== starting Tandem on 127.0.0.1:$tandem_port (admin on $admin_port)"
target/release/tandem --config "$work/tandem.yaml" 2>"$work/tandem.log" &
tandem_pid=$!
wait_port "$tandem_port"

client() {
  echo "mysql> $1"
  mariadb --no-defaults -h127.0.0.1 -P"$tandem_port" -uapp -p"$APP_PASSWORD" --table shop -e "$1"
}
echo "== a client session through Tandem"
client "SELECT VERSION(), DATABASE(), USER()"
client "CREATE TABLE account (id INT PRIMARY KEY, owner VARCHAR(20), balance DECIMAL(10,2))"
client "INSERT INTO account VALUES (1, 'alice', 100.00), (2, 'bob', 50.00)"
client "BEGIN; UPDATE account SET balance = balance - 30 WHERE id = 1; UPDATE account SET balance = balance + 30 WHERE id = 2; COMMIT; SELECT * FROM account"
client "BEGIN; UPDATE account SET balance = 0; ROLLBACK; SELECT owner, balance FROM account"
echo "mysql> SELECT * FROM missing   (errors come back exactly as the database sent them)"
mariadb --no-defaults -h127.0.0.1 -P"$tandem_port" -uapp -p"$APP_PASSWORD" shop -e "SELECT * FROM missing" 2>&1 || true
echo "== admin API"
curl -s "http://127.0.0.1:$admin_port/ready"; echo
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E '^tandem_(statements_total|client_connections_total|errors_total)' | grep -v ' 0$'
echo "== stopping (SIGTERM drains and exits 0)"
kill -TERM "$tandem_pid"
wait "$tandem_pid" && echo "tandem exited with status 0"
tandem_pid=""
