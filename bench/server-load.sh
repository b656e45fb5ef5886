#!/usr/bin/env bash
# Load test of the real aegis-server release binary: /health against a bare actix-web
# server, full_pipeline runs at 32 connections, history latency with 1,000,000 runs,
# idle RSS and start-up time. Installs wrk from Debian when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release -p aegis-server
cargo build --release -p aegis-api --examples
cargo build --release -p aegis-history --features test-support --example seed_runs
python3 bench/server_load.py
