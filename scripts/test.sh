#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration and black-box tests with
# cargo-nextest, then the documentation examples, which nextest does not run. The
# binaries the black-box tests start are built first: cargo builds a package's
# binaries for its own tests only, and the black-box tests live in their own package.
#
# Needs only the Rust toolchain, cargo-nextest and Python 3. Anything else a test
# needs is installed by this project's own scripts, never by hand: schemathesis goes
# into a venv under target/py. `scripts/test.sh --setup-only` installs and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# Schemathesis (from PyPI) fuzzes the running server in the black-box test
# `server_openapi::schemathesis_finds_no_server_errors`. It lives in a venv under
# target/py, created and filled here when missing or at another version.
schemathesis_version=4.32.5
venv=target/py
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$schemathesis_version"; then
  echo "installing schemathesis $schemathesis_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$schemathesis_version"
fi
export AEGIS_SCHEMATHESIS="$PWD/$venv/bin/schemathesis"
# Here a missing schemathesis is a failure, not a skipped check.
export AEGIS_REQUIRE_SCHEMATHESIS=1
# The dashboard's browser tests (`dashboard::browser_*`, driving tests/web) need Debian's
# chromium and nginx and playwright from PyPI: scripts/browser-setup.sh installs each
# when missing (never a browser download). Here a missing browser is a failure too.
bash scripts/browser-setup.sh
export AEGIS_BROWSER_PYTHON="$PWD/target/py-web/bin/python"
export AEGIS_REQUIRE_BROWSER=1
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

profile=default
if [ "${CI:-}" = "true" ]; then
  profile=ci
fi

cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --profile "$profile" "$@"
cargo test --workspace --locked --doc
