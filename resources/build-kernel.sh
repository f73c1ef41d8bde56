#!/usr/bin/env bash
# Build the irqvm guest kernel from Debian's linux-source-6.1 with
# resources/linux/irqvm.config and resources/linux/patches/*.patch.
#
# Output: $CACHE/linux/<key>/{vmlinux,bzImage,config,System.map,build.log}
#         $CACHE/linux/current -> <key>
# key = <linux-source version>-<sha256 of config fragment + patches + recipe>[:16].
# An unchanged rerun finds the key dir and returns at once ("cached").
# The source tree lives in $CACHE/linux/tree/<version>/ and is built in place, so a
# changed patch or config only recompiles what it touches.
set -euo pipefail
# shellcheck source=resources/lib.sh
. "$(dirname "$0")/lib.sh"

SRC_PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
FRAGMENT="$IRQVM_RESOURCES/linux/irqvm.config"
PATCH_DIR="$IRQVM_RESOURCES/linux/patches"
JOBS="${IRQVM_JOBS:-$(nproc)}"
# Bump when the build recipe below changes in a way that changes the output.
RECIPE=1

[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"
ensure_pkgs "$SRC_PKG" build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils binutils lz4
[ -f "$TARBALL" ] || die "$TARBALL not found although $SRC_PKG is installed; reinstall it: apt-get install --reinstall $SRC_PKG"

mapfile -t PATCHES < <(find "$PATCH_DIR" -maxdepth 1 -name '*.patch' -type f | LC_ALL=C sort)
VERSION="$(pkg_version "$SRC_PKG")"
HASH="$({
	echo "recipe $RECIPE"
	echo "fragment"; cat "$FRAGMENT"
	for p in "${PATCHES[@]}"; do echo "patch $(basename "$p")"; cat "$p"; done
} | sha256)"
KEY="${VERSION}-${HASH:0:16}"
OUT="$CACHE/linux/$KEY"

# Other runs (tests, other users of the cache) may be reading linux/current: replace the
# symlink atomically (rename over it) rather than unlink + create.
point_current() {
	ln -sfn "$KEY" "$CACHE/linux/.current.tmp"
	mv -T "$CACHE/linux/.current.tmp" "$CACHE/linux/current"
}

if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/bzImage" ]; then
	log "kernel: cached $OUT"
	point_current
	exit 0
fi

log "kernel: building $KEY (linux-source $VERSION, ${#PATCHES[@]} patches) with $JOBS jobs"
TREE_PARENT="$CACHE/linux/tree/$VERSION"
TREE="$TREE_PARENT/linux-source-6.1"
STATE="$TREE/.irqvm-patches"

extract_tree() {
	log "kernel: extracting $TARBALL into $TREE_PARENT"
	rm -rf "$TREE_PARENT"
	mkdir -p "$TREE_PARENT.tmp"
	tar -xf "$TARBALL" -C "$TREE_PARENT.tmp"
	mv "$TREE_PARENT.tmp" "$TREE_PARENT"
	mkdir -p "$STATE"
	: > "$STATE/series"
	touch "$TREE/.irqvm-extracted"
}

[ -f "$TREE/.irqvm-extracted" ] || extract_tree

# Bring the tree's applied patches in line with PATCH_DIR: if they differ, reverse the
# applied ones (newest first) and apply the wanted ones. A tree that will not reverse
# cleanly is extracted again.
wanted_series() { for p in "${PATCHES[@]}"; do printf '%s %s\n' "$(sha256 < "$p")" "$(basename "$p")"; done; }
if [ "$(wanted_series)" != "$(cat "$STATE/series" 2>/dev/null)" ]; then
	if [ -s "$STATE/series" ]; then
		log "kernel: patch set changed; reverting the previously applied patches"
		ok=1
		while read -r _ name; do
			if ! (cd "$TREE" && patch -p1 -R -s --no-backup-if-mismatch < "$STATE/$name"); then
				ok=0
				break
			fi
		done < <(tac "$STATE/series")
		if [ "$ok" -ne 1 ]; then
			log "kernel: could not revert cleanly; starting from a fresh tree"
			extract_tree
		fi
		find "$STATE" -name '*.patch' -delete
		: > "$STATE/series"
	fi
	for p in "${PATCHES[@]}"; do
		log "kernel: applying $(basename "$p")"
		(cd "$TREE" && patch -p1 -s --no-backup-if-mismatch < "$p") \
			|| die "patch $(basename "$p") does not apply to linux-source $VERSION; update it"
		cp "$p" "$STATE/"
		printf '%s %s\n' "$(sha256 < "$p")" "$(basename "$p")" >> "$STATE/series"
	done
fi

# Configuration: allnoconfig + fragment, then olddefconfig. Only replace .config when
# the result differs, so an unchanged config does not touch timestamps.
log "kernel: configuring (allnoconfig + $(basename "$FRAGMENT") + olddefconfig)"
(
	cd "$TREE"
	[ -f .config ] && cp -p .config .config.irqvm-prev
	scripts/kconfig/merge_config.sh -n /dev/null "$FRAGMENT" > .irqvm-merge.log 2>&1 \
		|| { cat .irqvm-merge.log >&2; exit 1; }
	make olddefconfig > /dev/null
	if [ -f .config.irqvm-prev ] && cmp -s .config .config.irqvm-prev; then
		mv .config.irqvm-prev .config
	else
		rm -f .config.irqvm-prev
	fi
)
# Every symbol the fragment asks for must have survived (unmet dependencies are dropped
# silently by Kconfig).
bad=()
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		grep -qxF -- "$line" "$TREE/.config" || bad+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$TREE/.config" || echo unset))")
		;;
	"# CONFIG_"*" is not set")
		sym="${line#\# }"; sym="${sym%% *}"
		if grep -qE "^${sym}=[ym]" "$TREE/.config"; then bad+=("$line (got: $(grep -E "^${sym}=" "$TREE/.config"))"); fi
		;;
	esac
done < "$FRAGMENT"
if [ "${#bad[@]}" -ne 0 ]; then
	printf '  %s\n' "${bad[@]}" >&2
	die "the kernel config dropped the symbols above (unmet dependencies); fix $FRAGMENT"
fi

mkdir -p "$CACHE/linux"
BUILD_LOG="$CACHE/linux/build-$KEY.log"
log "kernel: make vmlinux bzImage (log: $BUILD_LOG; ~7+ min on 2 cores from scratch)"
start=$(date +%s)
if ! (cd "$TREE" && nice -n 10 make -j"$JOBS" vmlinux bzImage) > "$BUILD_LOG" 2>&1; then
	tail -n 40 "$BUILD_LOG" >&2
	die "kernel build failed; full log in $BUILD_LOG"
fi
log "kernel: built in $(( $(date +%s) - start )) s"

# PVH entry: the ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18) with owner "Xen".
if ! readelf -W -n "$TREE/vmlinux" | awk '/^ *Xen / && /0x00000012/ {found=1} END {exit !found}'; then
	die "vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY note; is CONFIG_PVH=y in $FRAGMENT?"
fi

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
cp "$TREE/vmlinux" "$TREE/arch/x86/boot/bzImage" "$TREE/System.map" "$OUT.tmp/"
cp "$TREE/.config" "$OUT.tmp/config"
mv "$BUILD_LOG" "$OUT.tmp/build.log"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
point_current
log "kernel: ready $OUT"
