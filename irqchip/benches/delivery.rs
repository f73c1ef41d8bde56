//! Assert -> deliver -> EOI round trips through the pure state machines, in ns/op.
//!
//! `cargo bench -p irqchip --bench delivery -- --quick`
//!
//! These measure only the userspace controller logic (no KVM exits), i.e. the floor a split
//! irqchip delivery adds on top of the exits themselves.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use irqchip::ioapic::{Ioapic, IOREGSEL, IOWIN, REG_REDTBL};
use irqchip::msix::{MsixRaise, MsixTable, CTRL_ENABLE};
use irqchip::pic::PicPair;

fn pc_pic() -> PicPair {
    let mut p = PicPair::new();
    for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xA0, 0xA1, 0x28, 0x02)] {
        p.write(cmd, 0x11);
        p.write(data, base);
        p.write(data, icw3);
        p.write(data, 0x01);
        p.write(data, 0x00);
    }
    p
}

fn ioapic_with(pin: u8, level: bool) -> Ioapic {
    let mut io = Ioapic::new();
    io.set_storm_threshold(0);
    let lo: u32 = 0x50 | if level { 1 << 15 } else { 0 };
    io.mmio_write(IOREGSEL, &u32::from(REG_REDTBL + 2 * pin).to_le_bytes());
    io.mmio_write(IOWIN, &lo.to_le_bytes());
    io
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("delivery");

    let mut pic = pc_pic();
    g.bench_function("pic_edge_irq4_assert_inta_eoi", |b| {
        b.iter(|| {
            pic.set_irq(4, true);
            pic.set_irq(4, false);
            let v = pic.inta();
            pic.write(0x20, 0x20);
            black_box(v)
        })
    });

    let mut pic = pc_pic();
    g.bench_function("pic_slave_irq12_assert_inta_eoi", |b| {
        b.iter(|| {
            pic.set_irq(12, true);
            pic.set_irq(12, false);
            let v = pic.inta();
            pic.write(0xA0, 0x20);
            pic.write(0x20, 0x20);
            black_box(v)
        })
    });

    let mut io = ioapic_with(4, false);
    g.bench_function("ioapic_edge_assert_deliver", |b| {
        b.iter(|| {
            let fx = io.set_pin(4, true);
            io.set_pin(4, false);
            black_box(fx.delivered_pins())
        })
    });

    let mut io = ioapic_with(10, true);
    g.bench_function("ioapic_level_assert_deliver_deassert_eoi", |b| {
        b.iter(|| {
            let fx = io.set_pin(10, true);
            io.set_pin(10, false);
            let e = io.eoi(0x50);
            black_box((fx.delivered_pins(), e.eoi_pins))
        })
    });

    let mut t = MsixTable::new(4).expect("4 vectors");
    t.write_message_control(CTRL_ENABLE);
    t.table_write(0, &0xFEE0_0000u32.to_le_bytes());
    t.table_write(8, &0x60u32.to_le_bytes());
    t.table_write(12, &0u32.to_le_bytes());
    g.bench_function("msix_fire", |b| {
        b.iter(|| match t.raise(black_box(0)) {
            MsixRaise::Fire(m) => black_box(m.data),
            _ => 0,
        })
    });

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
