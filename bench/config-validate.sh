#!/usr/bin/env bash
# End-to-end time of `aegis-cli config validate` on .aegis.yaml.example (target: under
# 20 ms, median). Builds the release binary, installs hyperfine from Debian when it is
# missing, and prints hyperfine's summary plus the median in milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v hyperfine >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq hyperfine) >/dev/null
  else
    echo "hyperfine is needed: install it with your package manager" >&2
    exit 1
  fi
fi

cargo build --release -p aegis-cli
bin=target/release/aegis-cli
out=$(mktemp)
hyperfine --warmup 10 --runs "${RUNS:-200}" -N --export-json "$out" \
  "$bin config validate --config .aegis.yaml.example"
python3 - "$out" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))["results"][0]
print(f"median: {result['median'] * 1000:.2f} ms over {len(result['times'])} runs "
      f"(min {result['min'] * 1000:.2f} ms, max {result['max'] * 1000:.2f} ms)")
PY
rm -f "$out"
