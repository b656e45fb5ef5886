#!/usr/bin/env bash
# Installs the tools of the CI quality gates when missing or at another version:
#   cargo-tarpaulin  coverage (its ptrace engine needs no llvm-tools)   cargo install
#   cargo-deny       advisories, licences, bans, sources                cargo install
#   detect-secrets   the secret scan                                    PyPI, venv target/ci-py
# and makes the RustSec snapshot usable offline (see `advisory_db` below).
# Sourced by .ci/run; `bash scripts/ci-tools.sh` alone just installs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tarpaulin_version=0.37.5
deny_version=0.20.2
detect_secrets_version=1.5.0

if ! cargo tarpaulin --version 2>/dev/null | grep -qF "$tarpaulin_version"; then
  echo "installing cargo-tarpaulin $tarpaulin_version" >&2
  cargo install --quiet --locked cargo-tarpaulin --version "$tarpaulin_version"
fi
if ! cargo deny --version 2>/dev/null | grep -qF "$deny_version"; then
  echo "installing cargo-deny $deny_version" >&2
  cargo install --quiet --locked cargo-deny --version "$deny_version"
fi

ci_venv=target/ci-py
if ! "$ci_venv/bin/detect-secrets" --version 2>/dev/null | grep -qF "$detect_secrets_version"; then
  echo "installing detect-secrets $detect_secrets_version into $ci_venv" >&2
  python3 -m venv "$ci_venv"
  "$ci_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "detect-secrets==$detect_secrets_version"
fi
export AEGIS_DETECT_SECRETS="$PWD/$ci_venv/bin/detect-secrets"

# cargo-deny reads its advisory database from `db-path` (deny.toml), in a folder
# named after the database URL, as a git repository whose HEAD commit date is the
# database's date. Offline, that folder is made once from the RustSec snapshot in
# ../shared/advisory-db (next to the repository; `AEGIS_ADVISORY_DB` names another
# place, e.g. for a git worktree elsewhere); with the network (GitHub CI) cargo-deny
# fetches it there.
advisory_db=target/advisory-dbs/advisory-db-3157b0e258782691
source scripts/advisory-db.sh
if [ ! -d "$advisory_db/.git" ] && [ -d "$snapshot/crates" ]; then
  echo "preparing the offline advisory database from $snapshot" >&2
  rm -rf "$advisory_db"
  mkdir -p "$advisory_db"
  cp -R "$snapshot/." "$advisory_db/"
  chmod -R u+w "$advisory_db"
  snapshot_date=$(grep -o '([0-9-]*)' "$snapshot/SNAPSHOT.md" | head -n1 | tr -d '()')
  (
    cd "$advisory_db"
    git init --quiet
    git add --all
    GIT_AUTHOR_DATE="${snapshot_date}T00:00:00Z" GIT_COMMITTER_DATE="${snapshot_date}T00:00:00Z" \
      git -c user.name=aegis-ci -c user.email=ci@aegis.invalid \
      commit --quiet --no-gpg-sign -m "RustSec advisory database snapshot"
  )
fi
