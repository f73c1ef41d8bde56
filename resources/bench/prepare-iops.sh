#!/usr/bin/env bash
# Build the guest IOPS probe (guest/iops, a static std-only Rust binary) and the benchmark
# initramfs: the default busybox initramfs plus /bin/irqvm-iops.
#
#   resources/bench/prepare-iops.sh
#
# Outputs (cache, outside the clone; see resources/prepare-guests.sh):
#   $CACHE/bench/irqvm-iops            the static binary (not committed anywhere)
#   $CACHE/bench/initramfs-iops.cpio   busybox + /init + /bin/irqvm-iops
# Idempotent: cargo rebuilds only on source changes, and build-initramfs.sh prints "cached"
# when the binary's bytes are unchanged (paths are remapped, so every checkout of the same
# source gives the same binary). Uses only the installed toolchain and the host target
# x86_64-unknown-linux-gnu with glibc's static libraries (+crt-static).
set -euo pipefail
# shellcheck source=resources/lib.sh
. "$(dirname "$0")/../lib.sh"

ROOT="$(cd "$IRQVM_RESOURCES/.." && pwd)"
# prepare-guests.sh already holds the cache lock and exports IRQVM_CACHE_LOCKED.
[ -n "${IRQVM_CACHE_LOCKED:-}" ] || take_cache_lock
command -v cargo >/dev/null || die "cargo not found; install Rust (rustup) to build guest/iops"
ensure_pkgs libc6-dev

TARGET=x86_64-unknown-linux-gnu
TDIR="$CACHE/bench/target"
mkdir -p "$CACHE/bench"
log "bench: building guest/iops (static, $TARGET)"
RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$ROOT=/irqvm --remap-path-prefix=$HOME=/home" \
	cargo build -q --release --locked --manifest-path "$ROOT/guest/iops/Cargo.toml" \
	--target "$TARGET" --target-dir "$TDIR" >&2 \
	|| die "building guest/iops failed; if the link step cannot find -lc, install libc6-dev (glibc's static libraries)"
BIN="$TDIR/$TARGET/release/irqvm-iops"
if readelf -l "$BIN" | grep -q 'Requesting program interpreter'; then
	die "$BIN is dynamically linked; the guest has no libc, so it must be static (+crt-static)"
fi
cp "$BIN" "$CACHE/bench/irqvm-iops.tmp"
mv "$CACHE/bench/irqvm-iops.tmp" "$CACHE/bench/irqvm-iops"
IRQVM_INITRAMFS_EXTRA="/bin/irqvm-iops=$CACHE/bench/irqvm-iops" \
	"$IRQVM_RESOURCES/build-initramfs.sh" "$CACHE/bench/initramfs-iops.cpio"
echo "IRQVM_IOPS_INITRAMFS=$CACHE/bench/initramfs-iops.cpio"
