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
# The official Standard Webhooks library (PyPI `standardwebhooks`) verifies the
# signatures aegis-server sends in the black-box tests `webhooks::*`, through
# tests/webhooks/verify.py. It lives in a venv of its own under target/py-webhooks.
standardwebhooks_version=1.1.0
webhooks_venv=target/py-webhooks
if ! "$webhooks_venv/bin/python" -c "import sys; from importlib.metadata import version; sys.exit(version('standardwebhooks') != '$standardwebhooks_version')" 2>/dev/null; then
  echo "installing standardwebhooks $standardwebhooks_version into $webhooks_venv" >&2
  python3 -m venv "$webhooks_venv"
  "$webhooks_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "standardwebhooks==$standardwebhooks_version"
fi
export AEGIS_WEBHOOKS_PYTHON="$PWD/$webhooks_venv/bin/python"
export AEGIS_REQUIRE_STANDARDWEBHOOKS=1
# The dashboard's browser tests (`dashboard::browser_*`, driving tests/web) need Debian's
# chromium and nginx and playwright from PyPI: scripts/browser-setup.sh installs each
# when missing (never a browser download). Here a missing browser is a failure too.
bash scripts/browser-setup.sh
export AEGIS_BROWSER_PYTHON="$PWD/target/py-web/bin/python"
export AEGIS_REQUIRE_BROWSER=1

# --- promtool and the image test (SPEC section 12) ---------------------------------
# promtool (Debian `prometheus`) checks the /metrics exposition in the black-box
# tests `server_metrics::*`; installed here when missing, where apt-get can (root).
# With it in place its absence is a failure; without root the tests say FIXME.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing promtool (Debian prometheus)" >&2
  apt-get update -qq -o DPkg::Lock::Timeout=600
  # A policy-rc.d keeps the package from starting a Prometheus server of its own.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends prometheus >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if command -v promtool >/dev/null 2>&1; then
  AEGIS_PROMTOOL="$(command -v promtool)"
  export AEGIS_PROMTOOL AEGIS_REQUIRE_PROMTOOL=1
fi
# buildah for scripts/image-test.sh, which runs after the suite below.
bash scripts/image-test.sh --setup-only
# --- end of promtool and the image test setup ----------------------------------------

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

# --- The container image (SPEC section 12): scripts/image-test.sh -------------------
# Builds docker/Dockerfile with buildah from a release binary and checks the image
# (size, non-root, key requirement, health, data across a restart). It skips with a
# loud message only without root or where buildah cannot run at all. A run given
# nextest arguments (a filter) is after particular tests and leaves it out.
if [ $# -eq 0 ]; then
  bash scripts/image-test.sh
fi
