#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration and black-box tests with
# cargo-nextest, then the documentation examples, which nextest does not run. The
# binaries the black-box tests start are built first: cargo builds a package's
# binaries for its own tests only, and the black-box tests live in their own package.
#
# Needs only the Rust toolchain, cargo-nextest and Python 3. Anything else a test
# needs is installed by this project's own scripts, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=default
if [ "${CI:-}" = "true" ]; then
  profile=ci
fi

cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --profile "$profile" "$@"
cargo test --workspace --locked --doc
