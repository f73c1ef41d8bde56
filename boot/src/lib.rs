pub mod layout;
pub mod mptable;
