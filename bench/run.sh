#!/usr/bin/env bash
# Builds the release binaries and runs every figure of bench/RESULTS.md.
# Needs wrk (Debian package `wrk`) and python3. Options go to run.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "install wrk first: apt-get install wrk" >&2; exit 1; }
cargo build --release --bin image-catalog --example bare --example sled_flush
exec python3 bench/run.py "$@"
