#!/usr/bin/env bash
# Line coverage of the workspace with cargo-tarpaulin's ptrace engine (it needs no
# llvm-tools; the system LLVM is older than rustc's). Runs every unit, integration
# and black-box test; `--follow-exec` traces the aegis-server and aegis-cli
# processes the black-box tests start, so their lines count too. Prints the line
# figure and fails under 80 %.
#
# Excluded, and only these: benchmarks (`crates/*/benches/`), which tests do not
# run. No file of the workspace is generated code (derive macros expand into no
# source lines of their own), so nothing else is left out.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-tarpaulin >/dev/null 2>&1; then
  bash scripts/ci-tools.sh
fi
# The tools the black-box tests use (schemathesis, promtool, buildah).
bash scripts/test.sh --setup-only
export AEGIS_REQUIRE_SCHEMATHESIS=1
if command -v promtool >/dev/null 2>&1; then
  export AEGIS_REQUIRE_PROMTOOL=1
fi

started=$SECONDS
# Its own target folder: tarpaulin builds with other flags, which would otherwise
# rebuild the ordinary debug build each time. `--bins` builds the binaries there,
# next to the test executables, where the black-box tests look for them.
cargo tarpaulin --workspace --locked --engine ptrace --follow-exec --bins --tests \
  --target-dir target/tarpaulin --skip-clean \
  --exclude-files 'crates/*/benches/*' \
  --timeout 600 --out Json --output-dir target/coverage \
  --fail-under 80 "$@"
echo "coverage: took $((SECONDS - started)) s"
