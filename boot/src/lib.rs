pub mod acpi;
pub mod layout;
pub mod mptable;
