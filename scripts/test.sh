#!/usr/bin/env bash
# Runs every test of loxone-exporter on a fresh machine:
#   1. installs the real third-party components the tests use (scripts/install-test-deps.sh)
#   2. rustfmt and clippy (warnings are errors), rustdoc (warnings are errors)
#   3. all unit, integration and doc tests (CI=true: a missing component fails the test)
#   4. bounded fuzz runs of every fuzz target (FUZZ_SECONDS, default 30 per target)
# Benchmarks are built and smoke-run in test mode by `cargo test --all-targets`; their
# numbers come from scripts/bench.sh (never part of the test run).
set -euo pipefail
cd "$(dirname "$0")/.."
export CI=true   # whatever the caller set: a missing component must fail, never skip

step() { printf '\n==> %s\n' "$*"; }

step "installing test components"
envfile=$(bash scripts/install-test-deps.sh | tail -n 1)
# shellcheck disable=SC1090
source "$envfile"

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check   # its own workspace

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test --all-targets --no-fail-fast
cargo test --doc

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "fuzzing (${FUZZ_SECONDS:-30} s per target)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

echo
echo "all checks passed"
