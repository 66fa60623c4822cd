#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs (the pinned
# libtorch and ONNX Runtime wheels into .venv, Debian's chromium for the web-page
# test), builds the workspace, then runs every test, clippy and the format check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh

# Headless browser for the server's page test (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${LSE_SKIP_BROWSER:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium (Debian package) for the web page test" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "[test] chromium not found and apt-get unavailable; set LSE_SKIP_BROWSER=1 to skip the page test" >&2
    exit 1
  fi
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One clean build in CI: incremental caches would only add gigabytes of disk.
[ "${CI:-}" = "true" ] && export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Tests drive the real binaries: build them first (debug profile, as the tests).
cargo build --workspace --bins --examples
cargo test --workspace --no-fail-fast -- --test-threads="${LSE_TEST_THREADS:-2}"
# The benchmark's table and choices (scripts/bench_adapt.py; standard library only).
.venv/bin/python -m unittest discover -s scripts/tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] all checks passed"
