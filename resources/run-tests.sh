#!/usr/bin/env bash
# The whole test suite: prepare the guest artifacts (cached, idempotent), build, lint, run
# every unit, property and integration test (integration tests boot real guests on /dev/kvm),
# then list what was skipped and why.
#
#   bash resources/run-tests.sh
#
# Env: IRQVM_CACHE (artifact cache), IRQVM_TEST_THREADS (parallel tests, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/kvm ]; then
	echo "irqvm: /dev/kvm is missing: the integration tests need KVM" >&2
	exit 1
fi

bash resources/prepare-guests.sh

log=$(mktemp /tmp/irqvm-tests.XXXXXX)
status=0
cargo build --workspace --all-targets 2>&1 | tail -n 3
cargo clippy --workspace --all-targets -- -D warnings 2>&1 | tail -n 3
# guest/iops (the guest IOPS probe) is outside the workspace: lint and unit-test it too.
cargo clippy --manifest-path guest/iops/Cargo.toml --all-targets -- -D warnings 2>&1 | tail -n 3
cargo test -q --manifest-path guest/iops/Cargo.toml 2>&1 | tail -n 3
cargo test --workspace --no-fail-fast -- --test-threads="${IRQVM_TEST_THREADS:-2}" --nocapture 2>&1 | tee "$log" || status=$?

skipped=$(grep -c '^skipped: ' "$log" || true)
if [ "$skipped" -gt 0 ]; then
	echo
	echo "== skipped on this host (they did not pass; they did not run):"
	grep '^skipped: ' "$log" | sort -u
fi
rm -f "$log"
exit "$status"
