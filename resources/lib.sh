# shellcheck shell=bash
# Shared helpers for the irqvm guest-artifact scripts. Sourced, not executed.

# shellcheck disable=SC2034 # used by the scripts that source this file
IRQVM_RESOURCES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${IRQVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/irqvm}"

log() { printf '[irqvm-guests] %s\n' "$*" >&2; }
die() { printf '[irqvm-guests] error: %s\n' "$*" >&2; exit 1; }

# have_pkg PKG: true if the Debian package is installed.
have_pkg() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# ensure_pkgs PKG...: install the missing ones with apt-get, or explain why not.
ensure_pkgs() {
	local missing=() p
	for p in "$@"; do
		have_pkg "$p" || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	log "installing Debian packages: ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		die "packages missing: ${missing[*]}; run as root or install them with: sudo apt-get install ${missing[*]}"
	fi
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
		for p in "${missing[@]}"; do
			if ! apt-cache show "$p" >/dev/null 2>&1; then
				log "package '$p' is not known to apt (run 'apt-get update'; it is in Debian 12 bookworm main)"
			fi
		done
		die "could not install: ${missing[*]}; check that Debian's archive is reachable ('apt-get update') and rerun"
	fi
}

# sha256 of stdin
sha256() { sha256sum | cut -d' ' -f1; }

# pkg_version PKG: installed version of PKG
pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# with_lock: serialise runs that touch the cache (one writer at a time).
take_cache_lock() {
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock"
	if ! flock -n 9; then
		log "another prepare-guests run holds $CACHE/.lock; waiting"
		flock 9
	fi
}
