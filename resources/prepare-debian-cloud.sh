#!/usr/bin/env bash
# Debian's prebuilt cloud kernel as a second guest: vmlinuz from
# linux-image-<abi>-cloud-amd64 (fetched with apt-get download and unpacked with
# dpkg-deb -x into the cache; NOT installed on the host) and an initramfs with the
# busybox /init plus that kernel's virtio modules.
#
# Output: $CACHE/debian-cloud/vmlinuz, $CACHE/debian-cloud/initramfs.cpio,
#         $CACHE/debian-cloud/package (name=version of the image package used)
set -euo pipefail
# shellcheck source=resources/lib.sh
. "$(dirname "$0")/lib.sh"

META=linux-image-cloud-amd64
ensure_pkgs kmod
DIR="$CACHE/debian-cloud"
mkdir -p "$DIR"

# The metapackage depends on the current ABI's image package, e.g.
# linux-image-6.1.0-56-cloud-amd64; that one carries /boot/vmlinuz-* and the modules.
if ! apt-cache show "$META" >/dev/null 2>&1; then
	die "apt does not know $META; run 'apt-get update' (it is in Debian 12 bookworm main)"
fi
PKG="$(apt-cache depends --important "$META" | awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ {print $2; exit}')"
[ -n "$PKG" ] || die "could not resolve the image package that $META depends on (apt-cache depends $META)"
VER="$(apt-cache policy "$PKG" | awk '$1 == "Candidate:" {print $2}')"
if [ -z "$VER" ] || [ "$VER" = "(none)" ]; then
	die "no installable version of $PKG; run 'apt-get update'"
fi
WANT="$PKG=$VER"

ROOT="$DIR/root"
if [ -f "$DIR/vmlinuz" ] && [ "$(cat "$DIR/package" 2>/dev/null)" = "$WANT" ] && [ -d "$ROOT/lib/modules" ]; then
	log "debian-cloud: cached kernel $WANT"
else
	log "debian-cloud: fetching $WANT (apt-get download; not installed on the host)"
	rm -rf "$DIR/debs" "$ROOT"
	mkdir -p "$DIR/debs"
	sandbox=()
	# apt's download sandbox user (_apt) cannot write to root's cache dir.
	[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
	(cd "$DIR/debs" && apt-get "${sandbox[@]}" download "$WANT" >&2) \
		|| die "apt-get download $WANT failed; check that Debian's archive is reachable ('apt-get update') and rerun"
	deb=("$DIR"/debs/*.deb)
	[ -f "${deb[0]}" ] || die "apt-get download left no .deb in $DIR/debs"
	log "debian-cloud: unpacking $(basename "${deb[0]}") (dpkg-deb -x)"
	dpkg-deb -x "${deb[0]}" "$ROOT"
	vmlinuz=("$ROOT"/boot/vmlinuz-*)
	[ -f "${vmlinuz[0]}" ] || die "no /boot/vmlinuz-* in ${deb[0]}"
	# The package ships no modules.dep (depmod runs at install time); make it here.
	kver="$(basename "${vmlinuz[0]}")"; kver="${kver#vmlinuz-}"
	depmod -b "$ROOT" "$kver" || die "depmod -b $ROOT $kver failed"
	cp "${vmlinuz[0]}" "$DIR/vmlinuz.tmp"
	mv "$DIR/vmlinuz.tmp" "$DIR/vmlinuz"
	echo "$WANT" > "$DIR/package"
	rm -rf "$DIR/debs"
fi

"$IRQVM_RESOURCES/build-initramfs.sh" "$DIR/initramfs.cpio" "$ROOT" virtio_pci virtio_blk virtio_net virtio_mmio
