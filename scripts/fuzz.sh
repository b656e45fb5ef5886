#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (libFuzzer with AddressSanitizer): the config
# loader, the JSON Patch applier, the JUnit parser and the request-body JSON limits.
#
#   bash scripts/fuzz.sh                    every target, FUZZ_SECONDS each (180)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh json_patch
#
# Not part of CI (it takes minutes per target). cargo-fuzz comes from crates.io at a
# pinned version into target/fuzz-tools. It needs nightly compiler flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, so no other toolchain is installed.
# Each target starts from fuzz/seeds/<target> and keeps what it finds new in
# fuzz/corpus/<target>, minimized at the end (`cargo fuzz cmin`) so the committed
# corpora stay small. A crash stops the script with the input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz_version=0.13.2
tools="$PWD/target/fuzz-tools"
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  echo "installing cargo-fuzz $cargo_fuzz_version into $tools" >&2
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/target/fuzz"

seconds="${FUZZ_SECONDS:-180}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(config_load json_patch junit request_json)
fi

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  echo "==> cargo fuzz run $target for ${seconds}s" >&2
  start=$(date +%s)
  # -max_len keeps inputs to what a request body, a patch or a config plausibly is
  # while the fuzzer explores; the loader's own 1 MiB limit is tested elsewhere.
  cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1
  echo "==> $target ran $(( $(date +%s) - start ))s" >&2
  cargo fuzz cmin --fuzz-dir fuzz "$target" "$corpus"
done
