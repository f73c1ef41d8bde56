//! Integer formatting without `core`'s `Display for u64`, whose precompiled code uses SSE
//! (`movd`): this host's PVM KVM emulates instructions after some exits in a batch, and its
//! emulator lacks those instructions (KVM_EXIT_INTERNAL_ERROR; /work/shared/HOST-KVM.md).
//! The kernel is built without SSE and formats numbers only through these wrappers.

use core::fmt;

/// Decimal.
pub struct D(pub u64);
/// Hexadecimal with `0x`.
pub struct X(pub u64);
/// A string written straight through (`str`'s Display goes via `Formatter::pad`).
pub struct S<'a>(pub &'a str);

impl fmt::Display for S<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Signed decimal.
pub struct I(pub i64);

fn digits(mut v: u64, base: u64, buf: &mut [u8; 24]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v % base) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v /= base;
        if v == 0 {
            return i;
        }
    }
}

impl fmt::Display for D {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut b = [0u8; 24];
        let i = digits(self.0, 10, &mut b);
        f.write_str(core::str::from_utf8(&b[i..]).unwrap_or("?"))
    }
}

impl fmt::Display for X {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut b = [0u8; 24];
        let i = digits(self.0, 16, &mut b);
        f.write_str("0x")?;
        f.write_str(core::str::from_utf8(&b[i..]).unwrap_or("?"))
    }
}

impl fmt::Display for I {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0 < 0 {
            f.write_str("-")?;
        }
        D(self.0.unsigned_abs()).fmt(f)
    }
}
