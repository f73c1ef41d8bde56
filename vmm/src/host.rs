//! Facts about the host's KVM.

/// Whether /dev/kvm is KVM's PVM backend (no VMX/SVM; see shared/HOST-KVM.md).
pub fn is_pvm() -> bool {
    boot::cpuid::host_is_pvm()
}
