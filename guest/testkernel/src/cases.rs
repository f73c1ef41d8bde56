//! The test cases.

use crate::{report, Msg};
use core::sync::atomic::{AtomicUsize, Ordering};

pub enum Outcome {
    Pass,
    Fail(Msg),
    Skip(Msg),
}

static CURRENT: AtomicUsize = AtomicUsize::new(usize::MAX);

pub fn current() -> &'static str {
    CASES.get(CURRENT.load(Ordering::Relaxed)).map_or("boot", |c| c.name)
}

pub struct Case {
    pub name: &'static str,
    pub f: fn() -> Outcome,
}

fn self_ipi() -> Outcome {
    Outcome::Pass
}

pub static CASES: &[Case] = &[Case { name: "lapic_self_ipi", f: self_ipi }];

pub fn run_all() -> u32 {
    let (mut p, mut f, mut s) = (0, 0, 0);
    for (i, c) in CASES.iter().enumerate() {
        CURRENT.store(i, Ordering::SeqCst);
        match (c.f)() {
            Outcome::Pass => {
                p += 1;
                report(format_args!("PASS {}", c.name));
            }
            Outcome::Fail(m) => {
                f += 1;
                report(format_args!("FAIL {}: {}", c.name, m.as_str()));
            }
            Outcome::Skip(m) => {
                s += 1;
                report(format_args!("SKIP {}: {}", c.name, m.as_str()));
            }
        }
    }
    report(format_args!("{p} passed, {f} failed, {s} skipped"));
    (f != 0) as u32
}
