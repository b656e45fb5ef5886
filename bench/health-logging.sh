#!/usr/bin/env bash
# GET /health of the real aegis-server release binary with its default logging (a
# request line per request at `info`) against a bare actix-web server, side by side,
# three rounds, medians (issue 12: >= 0.7x). Part 1 of bench/server_load.py alone.
# Installs wrk from Debian when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release -p aegis-server
cargo build --release -p aegis-api --example bare_hello --example mock_qa
ONLY=health python3 bench/server_load.py
