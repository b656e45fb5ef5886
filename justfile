# Developer shortcuts. Every recipe is a plain command also given in the README, so
# nothing here is needed to build or test Aegis.

# Build every crate and binary.
build:
    cargo build --workspace

# Run every test (unit, integration, black-box, doc).
test:
    bash scripts/test.sh

# Formatting, lints, docs, dependency audit and secret scan, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --all-features -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
    bash scripts/audit.sh
    bash scripts/secret-scan.sh

# Benchmarks: criterion suites and the config-validate timing.
bench:
    cargo bench --workspace
    bash bench/config-validate.sh

# The container image: the whole build inside rust:1-slim-bookworm (needs Docker).
# Without a daemon or network, `bash scripts/image-test.sh` builds it with buildah
# from a release binary and checks it.
docker-build:
    docker build -f docker/Dockerfile -t aegis:latest .

# The server on http://127.0.0.1:8000 with the example configuration.
serve:
    cargo run --release -p aegis-server -- --config .aegis.yaml.example
