#!/usr/bin/env bash
# The whole test suite: installs what is missing (Debian packages, libvirtd and its setup),
# starts virtlogd and libvirtd when they are not running, checks that the fuzz targets compile,
# makes the real-guest tests' Debian guest when it is not cached, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# The fuzz crate (fuzz/, its own workspace) is built by nothing else: compile it here, on
# stable, so a change of the library's API cannot leave scripts/fuzz.sh broken unnoticed.
cargo check --manifest-path fuzz/Cargo.toml --all-targets
cargo build --all-targets
# The real-guest tests boot a Debian guest made once and cached (about 70 s when absent).
guest_start=$SECONDS
scripts/debian-guest.sh
echo "test.sh: the real-guest tests' Debian guest is ready ($((SECONDS - guest_start)) s; cached in ${VMDKIMPORT_GUEST_CACHE:-/var/tmp/vmdkimport-debian-guest})"
status=0
cargo nextest run --no-fail-fast "$@" || status=$?
# Tests that kill and restart libvirtd break every test running beside them: alone, after the rest.
cargo nextest run --no-fail-fast -E 'binary(daemon_restart)' --run-ignored only || status=$?
exit "$status"
