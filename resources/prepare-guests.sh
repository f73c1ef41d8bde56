#!/usr/bin/env bash
# Build (or find cached) every guest artifact irqvm boots, from Debian packages only.
#
#   resources/prepare-guests.sh [--no-debian-cloud]
#
# Cache: ${IRQVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/irqvm}  (outside the clone)
#   linux/<key>/vmlinux, linux/<key>/bzImage   guest kernel (PVH ELF and bzImage)
#   linux/current -> <key>                     the kernel of the current config+patches
#   initramfs.cpio                             busybox + /init, uncompressed newc
#   debian-cloud/vmlinuz                       Debian's prebuilt cloud kernel (bzImage)
#   debian-cloud/initramfs.cpio                busybox + /init + its virtio modules
#   bench/initramfs-iops.cpio                  busybox + /init + /bin/irqvm-iops (guest/iops)
# Needs root for apt-get (or the packages already installed). Reruns are idempotent:
# unchanged inputs print "cached" and take seconds. Env: IRQVM_JOBS (make -j, default
# nproc), IRQVM_CACHE.
set -euo pipefail
# shellcheck source=resources/lib.sh
. "$(dirname "$0")/lib.sh"

with_cloud=1
for a in "$@"; do
	case "$a" in
	--no-debian-cloud) with_cloud=0 ;;
	-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	*) die "unknown argument '$a' (see --help)" ;;
	esac
done

take_cache_lock
export IRQVM_CACHE_LOCKED=1
log "cache: $CACHE"
ensure_pkgs linux-source-6.1 busybox-static build-essential bc bison flex libelf-dev \
	libssl-dev cpio xz-utils binutils kmod lz4

step() {
	local name="$1" t0
	shift
	t0=$(date +%s)
	log "== $name"
	"$@"
	log "== $name: done in $(( $(date +%s) - t0 )) s"
}

step kernel "$IRQVM_RESOURCES/build-kernel.sh"
step initramfs "$IRQVM_RESOURCES/build-initramfs.sh" "$CACHE/initramfs.cpio"
step bench-initramfs "$IRQVM_RESOURCES/bench/prepare-iops.sh" > /dev/null
if [ "$with_cloud" -eq 1 ]; then
	step debian-cloud "$IRQVM_RESOURCES/prepare-debian-cloud.sh"
fi

key="$(readlink "$CACHE/linux/current")"
echo "IRQVM_KERNEL_KEY=$key"
echo "IRQVM_VMLINUX=$CACHE/linux/current/vmlinux"
echo "IRQVM_BZIMAGE=$CACHE/linux/current/bzImage"
echo "IRQVM_INITRAMFS=$CACHE/initramfs.cpio"
echo "IRQVM_IOPS_INITRAMFS=$CACHE/bench/initramfs-iops.cpio"
if [ "$with_cloud" -eq 1 ]; then
	echo "IRQVM_DEBIAN_CLOUD_VMLINUZ=$CACHE/debian-cloud/vmlinuz"
	echo "IRQVM_DEBIAN_CLOUD_INITRAMFS=$CACHE/debian-cloud/initramfs.cpio"
fi
echo "IRQVM_CMDLINE=$(tr -d '\n' < "$IRQVM_RESOURCES/default-cmdline.txt")"
