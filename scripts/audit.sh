#!/usr/bin/env bash
# The dependency audit: `cargo deny check` (advisories, licences, bans, sources) with
# deny.toml. Where the RustSec snapshot `../shared/advisory-db` exists (this
# project's machines, which have no network to fetch the database; `AEGIS_ADVISORY_DB`
# names another place), it runs offline against the copy scripts/ci-tools.sh prepares
# from it; elsewhere cargo-deny fetches the current database.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
  bash scripts/ci-tools.sh
fi
source scripts/advisory-db.sh
if [ -d "$snapshot/crates" ]; then
  AEGIS_ADVISORY_DB="$snapshot" bash scripts/ci-tools.sh
  # cargo metadata must find every crate of the lock file without the network.
  cargo fetch --locked --quiet
  cargo deny --offline check
else
  cargo deny check
fi
