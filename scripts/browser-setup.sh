#!/usr/bin/env bash
# Installs what the dashboard's browser tests need, each only when missing:
# Debian's chromium and nginx (through apt-get), and the `playwright` package from PyPI
# in a venv under target/py-web. Playwright drives the system Chromium; it never
# downloads a browser of its own (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD is set, and nothing
# here runs `playwright install`).
set -euo pipefail
cd "$(dirname "$0")/.."

playwright_version=1.56.0
venv=target/py-web

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} from Debian" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$venv/bin/python" -c "import playwright, sys; from importlib.metadata import version; sys.exit(version('playwright') != '$playwright_version')" 2>/dev/null; then
  echo "installing playwright $playwright_version into $venv" >&2
  python3 -m venv "$venv"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "playwright==$playwright_version"
fi
