#!/usr/bin/env bash
# The whole test suite: installs what is missing (Debian packages, libvirtd and its setup),
# starts virtlogd and libvirtd when they are not running, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo build --all-targets
cargo nextest run --no-fail-fast "$@"
