#!/usr/bin/env bash
# The container image test: builds docker/Dockerfile with buildah from a release
# binary (no Docker daemon or registry needed), starts the image with
# `buildah run --isolation chroot` and checks what SPEC section 12 promises:
#   - the image is under 50 MB (its size is printed);
#   - its config: non-root user, EXPOSE 8000, VOLUME /app/data, AEGIS_DB_PATH, the
#     HEALTHCHECK running `aegis-server healthcheck`;
#   - without AEGIS_API_KEY the server refuses to start, exits 1 and names the variable;
#   - with a key it serves /health and /health/ready on 0.0.0.0, as a non-root uid,
#     and `aegis-server healthcheck` inside the container exits 0 (1 once it stopped);
#   - a run recorded in the /app/data volume (a host folder here) is still there after
#     the container restarts, and /app/data in the image belongs to aegis.
#
# buildah comes from Debian (installed here when missing, as root). Without root, or
# where buildah cannot build at all, the test is skipped with a loud message.
# `scripts/image-test.sh --setup-only` installs and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! IMAGE TEST SKIPPED: $*" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "" >&2
  exit 0
}

if [ "$(id -u)" != 0 ]; then
  skip "buildah's chroot isolation needs root here; run as root to test the image"
fi
if ! command -v buildah >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    skip "buildah is missing and there is no apt-get to install it"
  fi
  echo "installing buildah (Debian)" >&2
  apt-get update -qq -o DPkg::Lock::Timeout=600
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends buildah >/dev/null
fi
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

# Everything buildah stores stays under target/, apart from the host's containers.
work=$PWD/target/image-test
rm -rf "$work/run"
mkdir -p "$work/storage" "$work/run" "$work/tmp"
export TMPDIR=$work/tmp
bah() {
  buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"
}
if ! bah from --quiet scratch >"$work/probe" 2>"$work/probe.err"; then
  skip "buildah cannot create a container here: $(cat "$work/probe.err")"
fi
bah rm "$(cat "$work/probe")" >/dev/null

fail() {
  echo "image test FAILED: $*" >&2
  exit 1
}

echo "==> image test: release build of aegis-server"
cargo build --release --locked -p aegis-server
sh docker/rootfs.sh target/release/aegis-server target/docker/rootfs

image=localhost/aegis:image-test
echo "==> image test: buildah bud (prebuilt binary, --isolation chroot, vfs)"
bah bud --quiet --isolation chroot --format docker --layers=false \
  --build-arg AEGIS_SOURCE=prebuilt -f docker/Dockerfile -t "$image" . >/dev/null

containers=()
server_pids=()
cleanup() {
  for pid in "${server_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ctr in "${containers[@]}"; do
    bah rm "$ctr" >/dev/null 2>&1 || true
  done
  bah rmi -f "$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# --- The image's size and configuration ---------------------------------------------
size=$(bah inspect --type image --format '{{.Size}}' "$image" 2>/dev/null || true)
if ! [[ "$size" =~ ^[0-9]+$ ]] || [ "$size" -eq 0 ]; then
  # Older buildah has no .Size: add up the layers of an exported copy.
  rm -rf "$work/export"
  bah push --quiet "$image" "dir:$work/export" >/dev/null
  size=$(du -sb "$work/export" | cut -f1)
fi
# .Size may count compressed layers; the files themselves are what a daemon stores.
content=$(du -sb target/docker/rootfs | cut -f1)
if [ "$content" -gt "$size" ]; then
  size=$content
fi
size_mb=$(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1000000 }')
echo "image size: $size bytes ($size_mb MB; limit 50 MB)"
[ "$size" -lt 50000000 ] || fail "the image is $size_mb MB, over 50 MB"

config=$(bah inspect --type image "$image")
check_config() {
  python3 -c '
import json, sys
doc = json.load(sys.stdin)
cfg = doc["Docker"]["config"]
problems = []
user = cfg.get("User")
if user != "10001:10001": problems.append(f"User is {user!r}")
if "8000/tcp" not in (cfg.get("ExposedPorts") or {}): problems.append("8000/tcp is not exposed")
if "/app/data" not in (cfg.get("Volumes") or {}): problems.append("/app/data is not a volume")
if "AEGIS_DB_PATH=/app/data/aegis_history.db" not in cfg.get("Env", []): problems.append("AEGIS_DB_PATH is not /app/data/aegis_history.db")
health = cfg.get("Healthcheck") or {}
if health.get("Test") != ["CMD", "/usr/local/bin/aegis-server", "healthcheck"]: problems.append(f"Healthcheck is {health!r}")
print("\n".join(problems))
'
}
problems=$(check_config <<<"$config")
[ -z "$problems" ] || fail "image config: $problems"
echo "image config: user 10001:10001, EXPOSE 8000, VOLUME /app/data, AEGIS_DB_PATH, HEALTHCHECK: ok"

# --- Starting it -------------------------------------------------------------------
ctr=$(bah from --quiet "$image")
containers+=("$ctr")
key=image-test-key-0123456789abcdef
# The volume: a host folder on /app/data, owned by aegis as a fresh named volume
# copied from the image would be.
data=$work/data
rm -rf "$data"
mkdir -p "$data"
chown 10001:10001 "$data"
image_data_owner=$(stat -c %u "$(bah mount "$ctr")/app/data")
bah umount "$ctr" >/dev/null
[ "$image_data_owner" = 10001 ] || fail "/app/data in the image is owned by uid $image_data_owner"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Without AEGIS_API_KEY: exit 1 and a message naming it.
set +e
bah run --isolation chroot --env AEGIS_PORT="$port" "$ctr" -- /usr/local/bin/aegis-server \
  >"$work/nokey.out" 2>"$work/nokey.err"
code=$?
set -e
[ "$code" -eq 1 ] || fail "without AEGIS_API_KEY the server exited $code, not 1: $(cat "$work/nokey.err")"
grep -q 'AEGIS_API_KEY' "$work/nokey.err" \
  || fail "without AEGIS_API_KEY the refusal does not name it: $(cat "$work/nokey.err")"
# The advice fits a container: pass the variable, not a default key written to a file.
grep -qF -- '-e AEGIS_API_KEY=' "$work/nokey.err" \
  || fail "without AEGIS_API_KEY the refusal does not say to pass -e AEGIS_API_KEY=: $(cat "$work/nokey.err")"
if grep -qF ':-default' "$work/nokey.err"; then
  fail "without AEGIS_API_KEY the refusal suggests writing a default key: $(cat "$work/nokey.err")"
fi
echo "without AEGIS_API_KEY: exit 1, $(grep -m1 'AEGIS_API_KEY' "$work/nokey.err")"

# Starts the server in the container in the background; sets `server` to the
# server's own pid (a descendant of buildah's).
start() {
  local log=$1
  bah run --isolation chroot --volume "$data:/app/data" --env AEGIS_API_KEY="$key" \
    --env AEGIS_PORT="$port" "$ctr" -- /usr/local/bin/aegis-server >"$log" 2>&1 &
  local launcher=$!
  server_pids+=("$launcher")
  local deadline=$((SECONDS + 120))
  until curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; do
    if ! kill -0 "$launcher" 2>/dev/null; then
      fail "the container exited before it was ready: $(cat "$log")"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "the container was not ready in 120 s: $(cat "$log")"
    sleep 0.2
  done
  server=""
  local pids=$launcher
  while [ -n "$pids" ] && [ -z "$server" ]; do
    local next=""
    for pid in $pids; do
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "aegis-server" ]; then
        server=$pid
      fi
      next="$next $(cat "/proc/$pid/task/"*/children 2>/dev/null || true)"
    done
    pids=$(echo "$next" | xargs)
  done
  [ -n "$server" ] || fail "cannot find the aegis-server process under buildah run ($launcher)"
  server_pids+=("$server")
  launcher_pid=$launcher
}

stop() {
  kill -TERM "$server"
  local deadline=$((SECONDS + 60))
  while kill -0 "$launcher_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the container did not stop within 60 s of SIGTERM"
    sleep 0.2
  done
  wait "$launcher_pid" || fail "the container exited non-zero after SIGTERM"
}

echo "==> image test: start with a key on port $port"
start "$work/first.log"
health=$(curl -fsS "http://127.0.0.1:$port/health")
grep -q '"status":"ok"' <<<"$health" || fail "/health answered $health"
curl -fsS -o /dev/null "http://127.0.0.1:$port/health/ready" || fail "/health/ready is not 200"
grep -q "listening on http://0.0.0.0:$port" "$work/first.log" \
  || fail "the server does not bind 0.0.0.0: $(cat "$work/first.log")"
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$server/status")
[ "$uid" != 0 ] || fail "the server runs as root"
[ "$uid" = 10001 ] || fail "the server runs as uid $uid, not aegis (10001)"
echo "/health and /health/ready: 200; bound 0.0.0.0; uid $uid (aegis)"

bah run --isolation chroot --env AEGIS_API_KEY="$key" --env AEGIS_PORT="$port" "$ctr" \
  -- /usr/local/bin/aegis-server healthcheck >/dev/null || fail "healthcheck failed on a serving container"
echo "aegis-server healthcheck in the container: exit 0"

# A run is refused without the key and recorded with it.
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/api/workflows/smoke/run")
[ "$status" = 401 ] || fail "starting a run without the key answered $status, not 401"
run=$(curl -fsS -X POST -H "X-API-Key: $key" "http://127.0.0.1:$port/api/workflows/smoke/run?wait=true")
run_id=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["status"] == "succeeded", r; print(r["id"])' "$run") \
  || fail "the smoke run did not succeed: $run"
stop

db=$data/aegis_history.db
[ -f "$db" ] || fail "no history database at /app/data/aegis_history.db"
owner=$(stat -c %u "$db")
[ "$owner" = 10001 ] || fail "/app/data/aegis_history.db is owned by uid $owner"
[ -d "$data/runs/$run_id" ] || fail "the run's folder is not under /app/data/runs"
echo "run $run_id recorded in /app/data (owned by aegis)"

set +e
bah run --isolation chroot --env AEGIS_API_KEY="$key" --env AEGIS_PORT="$port" "$ctr" \
  -- /usr/local/bin/aegis-server healthcheck >/dev/null 2>&1
code=$?
set -e
[ "$code" -eq 1 ] || fail "healthcheck exited $code with the server stopped, not 1"
echo "aegis-server healthcheck with the server stopped: exit 1"

echo "==> image test: restart"
start "$work/second.log"
again=$(curl -fsS -H "X-API-Key: $key" "http://127.0.0.1:$port/api/runs/$run_id") \
  || fail "run $run_id is gone after the restart"
grep -q '"status":"succeeded"' <<<"$again" || fail "run $run_id after the restart: $again"
stop
echo "run $run_id is still there after the restart"
echo "image test: passed (image $size_mb MB)"
