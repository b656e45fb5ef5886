#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration and black-box tests with
# cargo-nextest (which builds the real binaries the black-box tests start), then the
# documentation examples, which nextest does not run.
#
# Needs only the Rust toolchain, cargo-nextest and Python 3. Anything else a test
# needs is installed by this project's own scripts, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=default
if [ "${CI:-}" = "true" ]; then
  profile=ci
fi

cargo nextest run --workspace --locked --profile "$profile" "$@"
cargo test --workspace --locked --doc
