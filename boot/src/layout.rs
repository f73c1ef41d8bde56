//! Guest physical memory layout.
