# Developer shortcuts. Every recipe is a plain command also given in the README, so
# nothing here is needed to build or test Aegis.

# Build every crate and binary.
build:
    cargo build --workspace

# Run every test (unit, integration, black-box, doc).
test:
    bash scripts/test.sh

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# Benchmarks: criterion suites and the config-validate timing.
bench:
    cargo bench --workspace
    bash bench/config-validate.sh
