//! The guest CPUID, built by irqvm from KVM_GET_SUPPORTED_CPUID (never passed through blindly):
//! per-vCPU APIC ids and topology (SDM vol. 2A, CPUID leaves 01h, 0Bh, 1Fh), the TSC frequency
//! (leaves 15h/16h, so neither Linux nor the test kernel has to calibrate), the KVM paravirt
//! feature leaf, and a named template that masks what a host cannot run.
//!
//! Templates:
//! - `host`: what KVM supports, minus KVM PV send-IPI.
//! - `pvm-safe`: for KVM's PVM backend (no VMX/SVM; guest code can run through KVM's
//!   instruction emulator, which lacks cmpxchg16b, xsave/xrstor, popcnt, movbe, rdrand, ...,
//!   see shared/HOST-KVM.md). Masks those features and keeps only the KVM clock PV features.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A named set of CPUID masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuTemplate {
    Host,
    PvmSafe,
}

impl CpuTemplate {
    /// `pvm-safe` when the host's /dev/kvm is served by kvm_pvm, else `host`.
    pub fn detect() -> Self {
        if host_is_pvm() {
            CpuTemplate::PvmSafe
        } else {
            CpuTemplate::Host
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CpuTemplate::Host => "host",
            CpuTemplate::PvmSafe => "pvm-safe",
        }
    }
}

/// Whether /dev/kvm is KVM's PVM backend (paging + instruction emulation, no VMX/SVM).
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

const fn bit(n: u32) -> u32 {
    1 << n
}

// Leaf 01h ECX.
const ECX_FMA: u32 = bit(12);
const ECX_CX16: u32 = bit(13);
const ECX_PCID: u32 = bit(17);
const ECX_X2APIC: u32 = bit(21);
const ECX_MOVBE: u32 = bit(22);
const ECX_POPCNT: u32 = bit(23);
const ECX_TSC_DEADLINE: u32 = bit(24);
const ECX_XSAVE: u32 = bit(26);
const ECX_OSXSAVE: u32 = bit(27);
const ECX_AVX: u32 = bit(28);
const ECX_F16C: u32 = bit(29);
const ECX_RDRAND: u32 = bit(30);
const ECX_HYPERVISOR: u32 = bit(31);
// Leaf 06h EAX: ARAT (APIC timer always running).
const EAX6_ARAT: u32 = bit(2);
// Leaf 01h EDX.
const EDX_HTT: u32 = bit(28);
// Leaf 07h.0 EBX: keep only ERMS under pvm-safe.
const EBX7_ERMS: u32 = bit(9);
// Leaf 8000_0001h ECX: ABM/LZCNT, SSE4A, misaligned SSE, XOP, FMA4, TBM.
const ECX_EXT_PVM_MASK: u32 = bit(5) | bit(6) | bit(7) | bit(11) | bit(16) | bit(21);
// KVM PV features, leaf 4000_0001h EAX (Documentation/virt/kvm/x86/cpuid.rst).
const KVM_FEATURE_CLOCKSOURCE: u32 = bit(0);
const KVM_FEATURE_NOP_IO_DELAY: u32 = bit(1);
const KVM_FEATURE_CLOCKSOURCE2: u32 = bit(3);
const KVM_FEATURE_PV_SEND_IPI: u32 = bit(11);
const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = bit(24);

/// Per-vCPU facts the CPUID must describe.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    pub apic_id: u8,
    pub num_cpus: u8,
    /// TSC frequency in kHz (from KVM_GET_TSC_KHZ), if known.
    pub tsc_khz: Option<u32>,
}

fn find(entries: &[kvm_cpuid_entry2], function: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| e.function == function)
}

/// Build one vCPU's CPUID from what KVM supports.
pub fn build_cpuid(supported: &CpuId, template: CpuTemplate, topo: VcpuTopology) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let pvm = template == CpuTemplate::PvmSafe;
    // Bits needed to number the logical CPUs of the package (leaf 0Bh shift).
    let shift = 32 - (topo.num_cpus.max(1) as u32 - 1).leading_zeros();

    if pvm {
        // No XSAVE means no XSAVE state leaf either.
        entries.retain(|e| e.function != 0xd);
    }
    let max_basic = find(&entries, 0).map_or(0, |e| e.eax);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | ((topo.apic_id as u32) << 24)
                    | ((topo.num_cpus as u32) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if topo.num_cpus > 1 {
                    e.edx |= EDX_HTT;
                }
                if pvm {
                    e.ecx &= !(ECX_FMA
                        | ECX_CX16
                        | ECX_PCID
                        | ECX_MOVBE
                        | ECX_POPCNT
                        | ECX_XSAVE
                        | ECX_OSXSAVE
                        | ECX_AVX
                        | ECX_F16C
                        | ECX_RDRAND);
                }
                // x2APIC and TSC-deadline stay as KVM reports them (its LAPIC emulates both).
                let _ = (ECX_X2APIC, ECX_TSC_DEADLINE);
            }
            0x6 => {
                // Hide ARAT in every template: Linux 6.1 then keeps the 8254 PIT for boot-time
                // ticks (apic_needs_pit()), so IRQ0 -> IOAPIC pin 2 is exercised and checked by
                // Linux's check_timer() on every boot. With hlt-based idle the LAPIC timer
                // never stops, so the only cost is a few PIT ticks during boot.
                e.eax &= !EAX6_ARAT;
            }
            0x7 if pvm => {
                if e.index == 0 {
                    e.ebx &= EBX7_ERMS;
                    e.ecx = 0;
                    e.edx = 0;
                } else {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread/core), level 1 = core.
                e.edx = topo.apic_id as u32;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = topo.num_cpus as u32;
                        e.ecx = 0x200 | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            0x4000_0001 => {
                e.eax &= !KVM_FEATURE_PV_SEND_IPI;
                if pvm {
                    e.eax &= KVM_FEATURE_CLOCKSOURCE
                        | KVM_FEATURE_NOP_IO_DELAY
                        | KVM_FEATURE_CLOCKSOURCE2
                        | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;
                }
            }
            0x8000_0001 if pvm => {
                e.ecx &= !ECX_EXT_PVM_MASK;
            }
            _ => {}
        }
    }

    // TSC frequency: leaf 15h (TSC/crystal ratio; crystal 1 MHz so EBX = kHz) and 16h (MHz).
    if let Some(khz) = topo.tsc_khz.filter(|k| *k > 0) {
        if max_basic >= 0x16 {
            entries.retain(|e| e.function != 0x15 && e.function != 0x16);
            entries.push(kvm_cpuid_entry2 {
                function: 0x15,
                eax: 1,
                ebx: khz,
                ecx: 1000,
                ..Default::default()
            });
            entries.push(kvm_cpuid_entry2 {
                function: 0x16,
                eax: khz / 1000,
                ebx: khz / 1000,
                ecx: 100,
                ..Default::default()
            });
        }
    }
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0, 0x1f, 0, 0, 0),
            e(1, 0, 0x906ea, 0x0008_0800, !0, !0),
            e(7, 0, 0, !0, !0, !0),
            e(0xb, 0, 1, 1, 0x100, 0),
            e(0xb, 1, 4, 4, 0x201, 0),
            e(0xd, 0, 7, 0, 0, 0),
            e(0x4000_0001, 0, !0, 0, 0, 0),
            e(0x8000_0001, 0, 0, 0, !0, !0),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    const T2: VcpuTopology = VcpuTopology {
        apic_id: 1,
        num_cpus: 2,
        tsc_khz: Some(2_500_000),
    };

    #[test]
    fn leaf1_carries_apic_id_and_logical_count() {
        let c = build_cpuid(&supported(), CpuTemplate::Host, T2);
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 1);
        assert_eq!((l1.ebx >> 16) & 0xff, 2);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
    }

    #[test]
    fn leaf_0b_reports_x2apic_id_and_cpu_count() {
        let c = build_cpuid(&supported(), CpuTemplate::Host, T2);
        assert_eq!(get(&c, 0xb, 0).edx, 1);
        assert_eq!(get(&c, 0xb, 1).ebx, 2);
        assert_eq!(get(&c, 0xb, 1).eax, 1);
    }

    #[test]
    fn pv_send_ipi_is_never_advertised() {
        for t in [CpuTemplate::Host, CpuTemplate::PvmSafe] {
            let c = build_cpuid(&supported(), t, T2);
            assert_eq!(get(&c, 0x4000_0001, 0).eax & KVM_FEATURE_PV_SEND_IPI, 0);
        }
    }

    #[test]
    fn pvm_template_masks_emulator_missing_instructions() {
        let c = build_cpuid(&supported(), CpuTemplate::PvmSafe, T2);
        let l1 = get(&c, 1, 0);
        for f in [
            ECX_CX16, ECX_POPCNT, ECX_XSAVE, ECX_MOVBE, ECX_RDRAND, ECX_PCID, ECX_AVX,
        ] {
            assert_eq!(l1.ecx & f, 0, "feature {f:#x} must be masked");
        }
        assert_eq!(get(&c, 7, 0).ebx, EBX7_ERMS);
        assert!(c.as_slice().iter().all(|e| e.function != 0xd));
    }

    #[test]
    fn arat_is_hidden_so_linux_keeps_the_pit() {
        let mut sup: Vec<kvm_cpuid_entry2> = supported().as_slice().to_vec();
        sup.push(kvm_cpuid_entry2 {
            function: 6,
            eax: 0x4 | 0x1,
            ..Default::default()
        });
        let c = build_cpuid(&CpuId::from_entries(&sup).unwrap(), CpuTemplate::Host, T2);
        assert_eq!(get(&c, 6, 0).eax, 0x1);
    }

    #[test]
    fn host_template_keeps_xsave() {
        let c = build_cpuid(&supported(), CpuTemplate::Host, T2);
        assert_ne!(get(&c, 1, 0).ecx & ECX_XSAVE, 0);
    }

    #[test]
    fn tsc_frequency_leaf_gives_khz() {
        let c = build_cpuid(&supported(), CpuTemplate::Host, T2);
        let l = get(&c, 0x15, 0);
        assert_eq!(l.ecx as u64 * l.ebx as u64 / l.eax as u64, 2_500_000_000);
    }
}
