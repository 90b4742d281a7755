#!/usr/bin/env bash
# Installs what Tandem's build, tests, demo and benchmarks need on Debian: MariaDB, etcd,
# protoc, sysbench, HAProxy, openssl, Node.js and Python, plus the client libraries the tests
# drive.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have mariadbd || need+=(mariadb-server)
have mariadb || need+=(mariadb-client)
have etcd || need+=(etcd-server)
have etcdctl || need+=(etcd-client)
have protoc || need+=(protobuf-compiler)
have sysbench || need+=(sysbench)
have haproxy || need+=(haproxy)
have openssl || need+=(openssl)
have bc || need+=(bc)
have curl || need+=(curl)
have node || need+=(nodejs)
have npm || need+=(npm)
have python3 || need+=(python3)
if have python3 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Client libraries for the multi-language tests, kept inside the tree.
if [ ! -x target/py/bin/python ] || ! target/py/bin/python -c 'import pymysql, mysql.connector' 2>/dev/null; then
  python3 -m venv target/py
  target/py/bin/pip install -q --disable-pip-version-check -r tests/clients/python/requirements.txt
fi
if [ ! -d tests/clients/node/node_modules/mysql2 ]; then
  (cd tests/clients/node && npm install --no-package-lock --no-audit --no-fund --silent)
fi
