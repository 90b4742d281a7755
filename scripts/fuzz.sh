#!/usr/bin/env bash
# Fuzzes the frontend's packet handling with cargo-fuzz (libFuzzer) for a while.
#   scripts/fuzz.sh [SECONDS]   # default 300
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/frontend_packets
printf '\x0a\x00\x00\x01\x03select 1' >fuzz/corpus/frontend_packets/seed-query
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run frontend_packets -- \
  -max_total_time="${1:-300}" -rss_limit_mb=2048 -max_len=4096
