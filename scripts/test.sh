#!/usr/bin/env bash
# Runs every test of the project, in the order a failure is cheapest to see:
# formatting, lints, Rust unit and end-to-end tests, then the interop suite
# that drives the release-built server with the official `phoenix` npm client.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== JS interop suite (official phoenix client)"
cargo build --release --bin cinder
cd tests/js
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
fi
CINDER_BIN="$(cd ../.. && pwd)/target/release/cinder" npm test
