#!/usr/bin/env bash
# Boot a guest artifact under QEMU (-M microvm, KVM) with the CPUID masks this project
# uses on PVM hosts, for validation and side-by-side timings against irqvm.
#
#   resources/qemu-boot.sh [options] [-- extra qemu args]
#     --kernel PATH    vmlinux (PVH, default) or bzImage/vmlinuz
#                      (default: $CACHE/linux/current/vmlinux)
#     --initrd PATH    (default: $CACHE/initramfs.cpio)
#     --debian-cloud   use $CACHE/debian-cloud/{vmlinuz,initramfs.cpio}
#     --smp N          vCPUs (default 1)
#     --mem SIZE       guest RAM (default 256M)
#     --cmdline STR    full kernel command line (default: resources/default-cmdline.txt)
#     --append STR     appended to the command line (e.g. irqvm.init=shell)
#     --timeout S      kill QEMU after S seconds (default 180; 0 = none)
#     --no-mask        plain -cpu host (no CPUID masks; shows what breaks on PVM hosts)
#     --quiet-log      do not prefix lines with the elapsed time
#     --monitor SOCK   QEMU human monitor on a unix socket (e.g. for `info registers -a`
#                      when a guest hangs: python3/socat to SOCK)
# Prints every console line prefixed with seconds since QEMU started, then one summary
# line: "qemu-boot: exit=<status> wall=<s> init=<s|-> poweroff=<s|->".
# Exit status: 0 if the guest printed "IRQVM-INIT: poweroff" and QEMU exited, else 1.
set -euo pipefail
# shellcheck source=resources/lib.sh
. "$(dirname "$0")/lib.sh"

KERNEL="$CACHE/linux/current/vmlinux"
INITRD="$CACHE/initramfs.cpio"
SMP=1
MEM=256M
CMDLINE="$(tr -d '\n' < "$IRQVM_RESOURCES/default-cmdline.txt")"
APPEND=""
TIMEOUT=180
MASK=1
STAMP=1
EXTRA=()
EXTRA_MON=()
while [ $# -gt 0 ]; do
	case "$1" in
	--kernel) KERNEL="$2"; shift 2 ;;
	--initrd) INITRD="$2"; shift 2 ;;
	--debian-cloud) KERNEL="$CACHE/debian-cloud/vmlinuz"; INITRD="$CACHE/debian-cloud/initramfs.cpio"; shift ;;
	--smp) SMP="$2"; shift 2 ;;
	--mem) MEM="$2"; shift 2 ;;
	--cmdline) CMDLINE="$2"; shift 2 ;;
	--append) APPEND="$2"; shift 2 ;;
	--timeout) TIMEOUT="$2"; shift 2 ;;
	--no-mask) MASK=0; shift ;;
	--quiet-log) STAMP=0; shift ;;
	--monitor) EXTRA_MON=(-monitor "unix:$2,server,nowait"); shift 2 ;;
	--) shift; EXTRA=("$@"); break ;;
	-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[ -f "$KERNEL" ] || die "kernel $KERNEL not found; run resources/prepare-guests.sh"
[ -f "$INITRD" ] || die "initrd $INITRD not found; run resources/prepare-guests.sh"
[ -e /dev/kvm ] || die "/dev/kvm missing"
ensure_pkgs qemu-system-x86

# CPUID features KVM's PVM backend cannot emulate (see docs/guests.md). QEMU's -xsave
# does not hide XSAVE here, hence noxsave/clearcpuid on the command line as well.
# PV send-IPI and PV sched-yield are hypercalls that do not return on PVM hosts.
CPU=host
if [ "$MASK" -eq 1 ]; then
	CPU="host,-cx16,-popcnt,-bmi1,-bmi2,-movbe,-rdrand,-rdseed,-fsgsbase,-smap,-smep,-umip,-pcid,-invpcid,-xsave,kvm-pv-ipi=off,kvm-pv-sched-yield=off,-arch-capabilities"
fi
[ -n "$APPEND" ] && CMDLINE="$CMDLINE $APPEND"

# shellcheck disable=SC2054 # commas belong to QEMU's option syntax
QEMU=(qemu-system-x86_64 -M microvm,x-option-roms=off -enable-kvm -cpu "$CPU"
	-smp "$SMP" -m "$MEM" -nodefaults -no-user-config -nographic -display none
	-serial stdio -no-reboot
	-kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE" "${EXTRA_MON[@]}" "${EXTRA[@]}")
printf 'qemu-boot:' >&2; printf ' %q' "${QEMU[@]}" >&2; echo >&2

# Elapsed seconds since start into $NOW, without forking (EPOCHREALTIME has µs).
T0=${EPOCHREALTIME/[.,]/}
elapsed() {
	local d=$(( ${EPOCHREALTIME/[.,]/} - T0 ))
	printf -v NOW '%d.%03d' $(( d / 1000000 )) $(( d / 1000 % 1000 ))
}
init_at=- off_at=-
set +e
if [ "$TIMEOUT" -gt 0 ]; then QEMU=(timeout --foreground -k 5 "$TIMEOUT" "${QEMU[@]}"); fi
# Interactive use (irqvm.init=shell) needs QEMU on the terminal, not in a pipe.
if [[ "$CMDLINE" == *irqvm.init=shell* ]] && [ -t 0 ]; then
	"${QEMU[@]}"
	status=$?
else
	# stdin goes to the guest console only for the shell action (e.g. a here-doc).
	qin=/dev/null
	[[ "$CMDLINE" == *irqvm.init=shell* ]] && qin=/dev/stdin
	exec 3< <("${QEMU[@]}" < "$qin" 2>&1; echo "__QEMU_EXIT__ $?")
	status=255
	while IFS= read -r line <&3; do
		line="${line%$'\r'}"
		case "$line" in
		"__QEMU_EXIT__ "*) status="${line#__QEMU_EXIT__ }"; continue ;;
		esac
		elapsed; now=$NOW
		case "$line" in
		*"IRQVM-INIT: started"*) init_at="$now" ;;
		*"IRQVM-INIT: poweroff"*) off_at="$now" ;;
		esac
		if [ "$STAMP" -eq 1 ]; then printf '[%8s] %s\n' "$now" "$line"; else printf '%s\n' "$line"; fi
	done
fi
set -e
elapsed
echo "qemu-boot: exit=$status wall=$NOW init=$init_at poweroff=$off_at smp=$SMP kernel=$KERNEL"
[ "$off_at" != - ] && [ "$status" -eq 0 ]
