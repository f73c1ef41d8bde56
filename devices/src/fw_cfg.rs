//! QEMU's firmware configuration device (fw_cfg), traditional I/O-port interface only
//! (QEMU docs/specs/fw_cfg.rst, "Guest-side Hardware Interface"), so test kernels written for
//! QEMU that ask it for the CPU count or RAM size run unchanged.
//!
//! * Selector register: port 0x510 (`FW_CFG_PORT`, offset 0), 16-bit little-endian write.
//!   Selecting a key resets the data offset to 0. Bit 14 (write channel) is ignored, as items
//!   are read-only here; bit 15 selects architecture-local keys, of which none exist here.
//! * Data register: port 0x511 (offset 1). Each byte read returns the next byte of the
//!   selected item and advances the offset; a wider read returns that many successive bytes.
//!   Reads past the end of an item and reads of keys that do not exist return 0. Writes are
//!   ignored (the spec makes data writes no-ops since QEMU 2.4 for read-only items).
//! * No DMA interface (0x514): the ID item says so (feature bit 0 only).
//!
//! Items: 0x0000 signature "QEMU", 0x0001 ID (u32 LE features = 1, traditional interface),
//! 0x0003 FW_CFG_RAM_SIZE (u64 LE), 0x0005 FW_CFG_NB_CPUS (u16 LE), 0x000f FW_CFG_MAX_CPUS
//! (u16 LE), 0x0019 FW_CFG_FILE_DIR (an empty directory: a big-endian u32 count of 0).

use std::collections::BTreeMap;

use crate::BusDevice;

pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// Selector bit 14: write channel (ignored: items are read-only).
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// Selector bit 15: architecture-local key.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// ID feature bit 0: the traditional (selector/data port) interface.
pub const FW_CFG_VERSION: u32 = 1;

/// Selector at offset 0, data at offset 1.
const SELECTOR: u64 = 0;
const DATA: u64 = 1;

/// fw_cfg on the PIO bus at `FW_CFG_PORT` with length [`FwCfg::PORT_LEN`].
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    /// The selector as written, write-channel bit masked off.
    key: u16,
    /// Data offset into the selected item; saturates (reads that far return 0 anyway).
    offset: u32,
}

impl FwCfg {
    pub const PORT_LEN: u64 = 2;

    /// The items for a guest with `nb_cpus` boot vCPUs (of `max_cpus`) and `ram_size` bytes.
    pub fn new(nb_cpus: u16, max_cpus: u16, ram_size: u64) -> Self {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        items.insert(FW_CFG_ID, FW_CFG_VERSION.to_le_bytes().to_vec());
        items.insert(FW_CFG_RAM_SIZE, ram_size.to_le_bytes().to_vec());
        items.insert(FW_CFG_NB_CPUS, nb_cpus.to_le_bytes().to_vec());
        items.insert(FW_CFG_MAX_CPUS, max_cpus.to_le_bytes().to_vec());
        // The file directory is big-endian (fw_cfg.rst, "FW_CFG_FILE_DIR").
        items.insert(FW_CFG_FILE_DIR, 0u32.to_be_bytes().to_vec());
        Self {
            items,
            key: FW_CFG_SIGNATURE,
            offset: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.key)
            .and_then(|v| v.get(self.offset as usize))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == DATA {
            for b in data.iter_mut() {
                *b = self.next_byte();
            }
        } else {
            // The selector register is write-only.
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a 16-bit write to the selector selects (the register is 16 bits wide); data
        // writes are no-ops for read-only items.
        if let (SELECTOR, &[lo, hi]) = (offset, data) {
            self.key = u16::from_le_bytes([lo, hi]) & !FW_CFG_WRITE_CHANNEL;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> FwCfg {
        FwCfg::new(2, 4, 256 << 20)
    }

    fn select(d: &mut FwCfg, key: u16) {
        d.write(SELECTOR, &key.to_le_bytes());
    }

    fn read_bytes(d: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                d.read(DATA, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn signature_key_reads_qemu() {
        let mut d = dev();
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut d, 4), b"QEMU");
    }

    #[test]
    fn id_key_reports_the_traditional_interface_only() {
        let mut d = dev();
        select(&mut d, FW_CFG_ID);
        assert_eq!(read_bytes(&mut d, 4), vec![1, 0, 0, 0]);
    }

    #[test]
    fn nb_cpus_is_a_little_endian_u16() {
        let mut d = dev();
        select(&mut d, FW_CFG_NB_CPUS);
        assert_eq!(read_bytes(&mut d, 2), vec![2, 0]);
    }

    #[test]
    fn max_cpus_is_a_little_endian_u16() {
        let mut d = dev();
        select(&mut d, FW_CFG_MAX_CPUS);
        assert_eq!(read_bytes(&mut d, 2), vec![4, 0]);
    }

    #[test]
    fn ram_size_is_a_little_endian_u64() {
        let mut d = dev();
        select(&mut d, FW_CFG_RAM_SIZE);
        assert_eq!(read_bytes(&mut d, 8), (256u64 << 20).to_le_bytes().to_vec());
    }

    #[test]
    fn file_directory_is_empty_with_a_big_endian_count() {
        let mut d = FwCfg::new(1, 1, 1);
        select(&mut d, FW_CFG_FILE_DIR);
        assert_eq!(read_bytes(&mut d, 4), vec![0, 0, 0, 0]);
        // The count is big-endian: a non-empty directory would show in the last byte.
        assert_eq!(d.items[&FW_CFG_FILE_DIR], 0u32.to_be_bytes().to_vec());
    }

    #[test]
    fn reads_past_the_end_of_an_item_return_zero() {
        let mut d = dev();
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut d, 6), vec![b'Q', b'E', b'M', b'U', 0, 0]);
    }

    #[test]
    fn unknown_and_arch_local_keys_read_zero() {
        let mut d = dev();
        for key in [0x0002, 0x0100, FW_CFG_ARCH_LOCAL, 0xffff] {
            select(&mut d, key);
            assert_eq!(read_bytes(&mut d, 4), vec![0; 4], "key {key:#x}");
        }
    }

    #[test]
    fn selecting_a_key_resets_the_data_offset() {
        let mut d = dev();
        select(&mut d, FW_CFG_SIGNATURE);
        read_bytes(&mut d, 3);
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut d, 1), b"Q");
    }

    #[test]
    fn write_channel_bit_is_ignored_and_selects_the_same_item() {
        let mut d = dev();
        select(&mut d, FW_CFG_SIGNATURE | FW_CFG_WRITE_CHANNEL);
        assert_eq!(read_bytes(&mut d, 4), b"QEMU");
    }

    #[test]
    fn wide_data_read_returns_successive_bytes() {
        let mut d = dev();
        select(&mut d, FW_CFG_SIGNATURE);
        let mut b = [0u8; 4];
        d.read(DATA, &mut b);
        assert_eq!(&b, b"QEMU");
    }

    #[test]
    fn data_writes_do_not_change_items() {
        let mut d = dev();
        select(&mut d, FW_CFG_SIGNATURE | FW_CFG_WRITE_CHANNEL);
        d.write(DATA, b"XXXX");
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_bytes(&mut d, 4), b"QEMU");
    }

    #[test]
    fn byte_write_to_the_selector_does_not_select() {
        let mut d = dev();
        select(&mut d, FW_CFG_NB_CPUS);
        d.write(SELECTOR, &[0]);
        assert_eq!(read_bytes(&mut d, 1), vec![2]);
    }

    #[test]
    fn selector_is_write_only_and_reads_zero() {
        let mut d = dev();
        let mut b = [0xaau8; 2];
        d.read(SELECTOR, &mut b);
        assert_eq!(b, [0, 0]);
    }

    proptest::proptest! {
        /// Any sequence of accesses at any offset and size never panics, and the signature
        /// still reads back afterwards.
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, 0u64..4, proptest::collection::vec(proptest::num::u8::ANY, 0..9)),
                0..200,
            )
        ) {
            let mut d = dev();
            for (write, off, mut buf) in ops {
                if write {
                    d.write(off, &buf);
                } else {
                    d.read(off, &mut buf);
                }
            }
            select(&mut d, FW_CFG_SIGNATURE);
            proptest::prop_assert_eq!(read_bytes(&mut d, 4), b"QEMU".to_vec());
        }
    }
}
