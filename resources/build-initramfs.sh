#!/usr/bin/env bash
# Pack an uncompressed newc initramfs: static busybox + resources/initramfs/init, and
# optionally kernel modules (virtio transports and devices) from an extracted kernel
# package, loaded by /init with insmod in dependency order.
#
#   build-initramfs.sh OUT.cpio                  busybox + /init
#   build-initramfs.sh OUT.cpio MODROOT [MOD...] also MODROOT/lib/modules/<kver>/ modules
#                                                MOD... (default: virtio_pci virtio_blk
#                                                virtio_net virtio_mmio) and their deps
#
# Env IRQVM_INITRAMFS_EXTRA: extra executables, whitespace-separated GUEST_PATH=HOST_FILE
# entries (e.g. /bin/irqvm-iops=/path/to/irqvm-iops, see resources/bench/prepare-iops.sh);
# they are part of the cache key like every other packed file.
#
# Uncompressed on purpose: inflating a gzip'd initramfs costs seconds on hosts that
# emulate instructions. Device nodes come from the kernel's own usr/gen_init_cpio (built
# from the linux-source tree), so no root and no mknod are needed. Reruns with the same
# inputs print "cached" and return at once (OUT.key holds the input hash).
set -euo pipefail
# shellcheck source=resources/lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 OUT.cpio [MODROOT [MODULE...]]"
OUT="$1"
MODROOT="${2:-}"
shift $(( $# >= 2 ? 2 : 1 ))
MODULES=("$@")
[ "${#MODULES[@]}" -gt 0 ] || MODULES=(virtio_pci virtio_blk virtio_net virtio_mmio)
INIT="$IRQVM_RESOURCES/initramfs/init"
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz

ensure_pkgs busybox-static "$SRC_PKG" build-essential xz-utils binutils
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing although busybox-static is installed; apt-get install --reinstall busybox-static"
if readelf -l "$BUSYBOX" | grep -q 'Requesting program interpreter'; then
	die "$BUSYBOX is dynamically linked (package 'busybox' instead of 'busybox-static'?); apt-get install busybox-static"
fi

# gen_init_cpio from the kernel source (one C file, no other deps).
VERSION="$(pkg_version "$SRC_PKG")"
GEN="$CACHE/tools/gen_init_cpio-$VERSION"
if [ ! -x "$GEN" ]; then
	mkdir -p "$CACHE/tools"
	src="$CACHE/linux/tree/$VERSION/linux-source-6.1/usr/gen_init_cpio.c"
	tmpd="$(mktemp -d)"
	if [ ! -f "$src" ]; then
		log "initramfs: extracting usr/gen_init_cpio.c from $TARBALL"
		tar -xJf "$TARBALL" -C "$tmpd" linux-source-6.1/usr/gen_init_cpio.c
		src="$tmpd/linux-source-6.1/usr/gen_init_cpio.c"
	fi
	gcc -O2 -o "$GEN.tmp" "$src"
	mv "$GEN.tmp" "$GEN"
	rm -rf "$tmpd"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SPEC="$WORK/spec"
{
	for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /run /root /etc /lib /lib/modules /mnt; do
		echo "dir $d 0755 0 0"
	done
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "nod /dev/null 0666 0 0 c 1 3"
	echo "nod /dev/ttyS0 0660 0 0 c 4 64"
	echo "file /bin/busybox $BUSYBOX 0755 0 0"
	"$BUSYBOX" --list-full | LC_ALL=C sort | while read -r applet; do
		[ "$applet" = bin/busybox ] && continue
		echo "slink /$applet /bin/busybox 0777 0 0"
	done
	echo "file /init $INIT 0755 0 0"
	for extra in ${IRQVM_INITRAMFS_EXTRA:-}; do
		gpath="${extra%%=*}"
		hpath="${extra#*=}"
		case "$gpath" in /*) ;; *) die "IRQVM_INITRAMFS_EXTRA entry '$extra': want /GUEST/PATH=HOST_FILE" ;; esac
		[ -f "$hpath" ] || die "IRQVM_INITRAMFS_EXTRA entry '$extra': $hpath is not a file"
		echo "file $gpath $hpath 0755 0 0"
	done
	echo "file /etc/irqvm-initramfs $WORK/stamp 0644 0 0"
} > "$SPEC"

if [ -n "$MODROOT" ]; then
	kvers=("$MODROOT"/lib/modules/*/)
	if [ "${#kvers[@]}" -ne 1 ] || [ ! -d "${kvers[0]}" ]; then
		die "expected exactly one kernel under $MODROOT/lib/modules"
	fi
	MODDIR="${kvers[0]%/}"
	KVER="$(basename "$MODDIR")"
	[ -f "$MODDIR/modules.dep" ] || die "$MODDIR/modules.dep missing"
	# modules.dep: "path/a.ko: path/dep1.ko path/dep2.ko" with the full dependency closure.
	declare -A DEP PATHOF SEEN
	while IFS= read -r line; do
		m="${line%%:*}"
		n="${m##*/}"; n="${n%%.ko*}"; n="${n//-/_}"
		PATHOF[$n]="$m"
		DEP[$m]="${line#*:}"
	done < "$MODDIR/modules.dep"
	ORDER=()
	visit() { # post-order: dependencies first
		local m="$1" d
		[ -n "${SEEN[$m]:-}" ] && return 0
		SEEN[$m]=1
		for d in ${DEP[$m]}; do visit "$d"; done
		ORDER+=("$m")
	}
	for want in "${MODULES[@]}"; do
		n="${want//-/_}"
		if [ -n "${PATHOF[$n]:-}" ]; then
			visit "${PATHOF[$n]}"
		elif grep -qE "/${n//_/[-_]}\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
			log "initramfs: $n is built into kernel $KVER"
		else
			die "module $n not found in $MODDIR (neither modules.dep nor modules.builtin)"
		fi
	done
	mkdir -p "$WORK/mods"
	: > "$WORK/load-order"
	echo "dir /lib/modules/$KVER 0755 0 0" >> "$SPEC"
	for m in "${ORDER[@]}"; do
		base="$(basename "$m")"
		case "$base" in
		*.ko) cp "$MODDIR/$m" "$WORK/mods/$base" ;;
		*.ko.xz) base="${base%.xz}"; xz -dc "$MODDIR/$m" > "$WORK/mods/$base" ;;
		*.ko.gz) base="${base%.gz}"; gzip -dc "$MODDIR/$m" > "$WORK/mods/$base" ;;
		*.ko.zst) base="${base%.zst}"; command -v zstd >/dev/null || ensure_pkgs zstd
			zstd -qdc "$MODDIR/$m" > "$WORK/mods/$base" ;;
		*) die "unexpected module file $m" ;;
		esac
		echo "file /lib/modules/$KVER/$base $WORK/mods/$base 0644 0 0" >> "$SPEC"
		echo "$KVER/$base" >> "$WORK/load-order"
	done
	echo "file /lib/modules/irqvm-load-order $WORK/load-order 0644 0 0" >> "$SPEC"
	log "initramfs: modules for $KVER in load order: $(tr '\n' ' ' < "$WORK/load-order")"
fi

# Input hash: the spec with every packed file's content hash.
KEYV="$({
	echo "recipe 1"
	while read -r kind path src _; do
		echo "$kind $path"
		[ "$kind" = file ] && [ "$src" != "$WORK/stamp" ] && sha256 < "$src"
	done < "$SPEC"
	true
} | sha256)"
if [ -f "$OUT" ] && [ "$(cat "$OUT.key" 2>/dev/null)" = "$KEYV" ]; then
	log "initramfs: cached $OUT"
	exit 0
fi
echo "irqvm initramfs $KEYV" > "$WORK/stamp"
mkdir -p "$(dirname "$OUT")"
# Fixed timestamp: same inputs, same bytes.
"$GEN" -t 0 "$SPEC" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$KEYV" > "$OUT.key"
log "initramfs: wrote $OUT ($(stat -c %s "$OUT") bytes)"
