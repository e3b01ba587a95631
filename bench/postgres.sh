#!/usr/bin/env bash
# Builds the release binary and runs bench/postgres.py: image-catalog on PostgreSQL,
# beside image-catalog on sled and beside pgbench on the same private cluster.
# Needs wrk, pgbench and the PostgreSQL 15 server binaries (PG_BIN, default
# /usr/lib/postgresql/15/bin; Debian: apt-get install wrk postgresql-15), python3.
# Options go to postgres.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "install wrk first: apt-get install wrk" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "install pgbench first: apt-get install postgresql-client-15" >&2; exit 1; }
cargo build --release --bin image-catalog
exec python3 bench/postgres.py "$@"
