#!/usr/bin/env bash
# A longer run of the AT property test (tests/at_property.rs) with a random seed: random global
# transactions through Tandem against a private MariaDB, each rolled back or committed, every
# table compared with its snapshot or with a twin database. Prints the seed and the figures;
# a failing case prints its statements.
#
#   scripts/property.sh [CASES] [SEED]     (defaults: 2000 cases, a random seed)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

scripts/setup.sh
cases="${1:-2000}"
seed="${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"

dir="target/test-servers/property-mariadb-$$"
port=$(free_port)
scripts/mariadb.sh start "$dir" "$port"
cleanup() { scripts/mariadb.sh stop "$dir"; rm -rf "$dir"; }
trap cleanup EXIT

echo "AT property test: $cases cases, seed $seed"
TANDEM_TEST_MARIADB_PORT="$port" TANDEM_PROPERTY_SEED="$seed" TANDEM_PROPERTY_CASES="$cases" \
  cargo test --test at_property -- --nocapture
