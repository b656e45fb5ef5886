# Sourced by scripts/audit.sh and scripts/ci-tools.sh: sets `snapshot` to the RustSec
# snapshot to audit against offline. `AEGIS_ADVISORY_DB` names it; otherwise it is
# `../shared/advisory-db` next to the repository, or next to the checkout this one
# was cloned from (a clean clone for CI, `git clone -q . /tmp/ci-check`, keeps the
# original as its `origin`).
snapshot=${AEGIS_ADVISORY_DB:-}
if [ -z "$snapshot" ]; then
  snapshot=../shared/advisory-db
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  if [ ! -d "$snapshot/crates" ] && [ -n "$origin" ] && [ -d "$origin/../shared/advisory-db/crates" ]; then
    snapshot="$origin/../shared/advisory-db"
  fi
fi
