#!/usr/bin/env bash
# Boot the default guest: prepare the artifacts (first run builds the guest kernel from
# Debian's linux-source, ~10 minutes on 2 cores; later runs take seconds), build irqvm, and
# boot Linux with a busybox shell on this terminal. Extra arguments go to `irqvm run`
# (e.g. --vcpus 2, --irqchip split, --cmdline "... irqvm.init=poweroff").
#
#   bash resources/boot-default-guest.sh [irqvm run options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash resources/prepare-guests.sh --no-debian-cloud >/dev/null
cache="${IRQVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/irqvm}"
cargo build --release -q -p vmm --bin irqvm
cmdline="$(tr -d '\n' < resources/default-cmdline.txt) irqvm.init=shell"
exec ./target/release/irqvm run \
	--kernel "$cache/linux/current/vmlinux" \
	--initrd "$cache/initramfs.cpio" \
	--memory 256 --cmdline "$cmdline" "$@"
