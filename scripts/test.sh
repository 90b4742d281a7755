#!/usr/bin/env bash
# Runs all of Tandem's checks and tests against real servers it starts on loopback ports:
# formatting, clippy, unit tests, and the integration tests in tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

# Scratch directories of earlier runs (servers' data, logs) go first, with any server an
# interrupted run left behind.
for d in target/test-scratch/*-mariadb; do
  [ -d "$d" ] && scripts/mariadb.sh stop "$d"
done
rm -rf target/test-scratch

# One MariaDB for the whole run; tests create their own databases in it.
dir="target/test-servers/mariadb-$$"
port=$(free_port)
scripts/mariadb.sh start "$dir" "$port"
cleanup() { scripts/mariadb.sh stop "$dir"; rm -rf "$dir"; }
trap cleanup EXIT
export TANDEM_TEST_MARIADB_PORT="$port"
export TANDEM_TEST_PYTHON="$PWD/target/py/bin/python"

cargo test --lib --bins --tests --no-fail-fast -- --test-threads=4
