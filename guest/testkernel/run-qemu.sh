#!/bin/sh
# Run the test kernel under QEMU microvm with the portable devices (pc-testdev lines,
# isa-debug-exit at 0xf4, PIT, PIC). KIRQ=on|split picks QEMU's kernel-irqchip (default on:
# KVM's in-kernel PIC/IOAPIC). APPEND sets the kernel command line. Extra args go to QEMU.
# Exit status: QEMU's isa-debug-exit returns (status << 1) | 1, so 1 = all passed.
elf=${ELF:-$(dirname "$0")/target/testkernel.elf}
exec timeout ${TIMEOUT:-120} qemu-system-x86_64 -M microvm,pit=on,pic=on,rtc=on -accel kvm,kernel-irqchip=${KIRQ:-on} -m 128 \
  -smp ${SMP:-2} -kernel "$elf" -append "${APPEND:-irqvm.ncpus=${SMP:-2}}" \
  -nodefaults -no-user-config -display none -serial stdio \
  -device isa-debug-exit,iobase=0xf4,iosize=4 -device pc-testdev "$@"
