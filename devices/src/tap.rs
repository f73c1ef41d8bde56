//! A Linux tap device (`/dev/net/tun`, Documentation/networking/tuntap.rst) as a virtio-net
//! backend: layer-2 frames, each preceded by a 12-byte `virtio_net_hdr_v1` (virtio 1.2,
//! 5.1.6), no packet-information prefix, non-blocking.
//!
//! Opening: `open("/dev/net/tun")`, then `TUNSETIFF` with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR` attaches to the tap called `name` (creating a non-persistent one when it
//! does not exist and the caller has CAP_NET_ADMIN), `TUNSETVNETHDRSZ` makes the header 12
//! bytes (the `num_buffers` field of VERSION_1 included), and `TUNSETOFFLOAD 0` keeps checksum
//! and segmentation offloads off, so every frame the tap hands over is complete and
//! checksummed and its header carries no offload requests.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::raw::{c_int, c_uint};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

/// Size of `struct virtio_net_hdr_v1` (virtio 1.2, 5.1.6): the header in front of each
/// frame the tap reads or writes.
pub const VNET_HDR_LEN: usize = 12;

/// The longest interface name the kernel accepts (IFNAMSIZ 16 including the NUL).
pub const MAX_NAME_LEN: usize = 15;

/// The path of the tun/tap clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

// ioctl numbers from include/uapi/linux/if_tun.h:
//   #define TUNSETIFF       _IOW('T', 202, int)
//   #define TUNSETOFFLOAD   _IOW('T', 208, unsigned int)
//   #define TUNSETVNETHDRSZ _IOW('T', 216, int)
const TUNTAP: c_uint = b'T' as c_uint;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);

/// `struct ifreq` as TUNSETIFF reads it (include/uapi/linux/if.h): the name, then the
/// union whose first member for this ioctl is `short ifr_flags`; 40 bytes on x86-64.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name '{0}' is not usable: it must be 1 to {MAX_NAME_LEN} bytes without '/', ':', whitespace or NUL")]
    BadName(String),
    #[error("{TUN_PATH} does not exist: load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)")]
    NoTunDevice,
    #[error("permission denied opening {TUN_PATH}: run irqvm as root, or give it CAP_NET_ADMIN, or make the tap persistent and owned by this user (ip tuntap add dev NAME mode tap user $USER)")]
    TunPermission,
    #[error("cannot open {TUN_PATH}: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("tap {0} is in use by another process (a tap without multi_queue takes one user); stop the other user or pick another tap")]
    Busy(String),
    #[error("not allowed to attach tap {0}: it belongs to another user or group, or creating it needs CAP_NET_ADMIN; create it for this user first (ip tuntap add dev {0} mode tap user $USER), or run irqvm with CAP_NET_ADMIN (e.g. as root)")]
    Permission(String),
    #[error("{0} exists but is not a tap device (a tun device or another interface type?); pick another name or delete it (ip link del {0})")]
    NotTap(String),
    #[error("TUNSETIFF for tap {name} failed: {source}")]
    SetIff {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuring tap {name} ({what}) failed: {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Check a tap name the way the kernel's `dev_valid_name` does (net/core/dev.c).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Attach to (or create) the tap `name`; see the module documentation.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TapError::NoTunDevice,
                std::io::ErrorKind::PermissionDenied => TapError::TunPermission,
                _ => TapError::OpenTun(e),
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a live, correctly sized `struct ifreq` the kernel only reads and
        // writes within its 40 bytes; the fd is ours.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETIFF(), &req) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            let name = name.to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name),
                Some(libc::EINVAL) => TapError::NotTap(name),
                _ => TapError::SetIff { name, source: e },
            });
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        let hdr_len = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer; `hdr_len` outlives the call.
        let ret = unsafe { ioctl_with_ref(&tap.file, TUNSETVNETHDRSZ(), &hdr_len) };
        if ret < 0 {
            return Err(tap.configure_error("TUNSETVNETHDRSZ 12"));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe { ioctl_with_val(&tap.file, TUNSETOFFLOAD(), 0) };
        if ret < 0 {
            return Err(tap.configure_error("TUNSETOFFLOAD 0"));
        }
        Ok(tap)
    }

    fn configure_error(&self, what: &'static str) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            what,
            source: std::io::Error::last_os_error(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where virtio-net sends and receives frames: a tap, or in tests a datagram socket pair.
/// Each `recv`/`send` moves exactly one frame with its 12-byte `virtio_net_hdr_v1`.
pub trait FrameIo: Send {
    /// Read one frame into `buf` (non-blocking: `WouldBlock` when none is queued).
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Write one frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// The fd to poll for readability.
    fn fd(&self) -> RawFd;
    /// For logs ("tap0").
    fn label(&self) -> String;
}

impl FrameIo for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn label(&self) -> String {
        format!("tap {}", self.name)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }

    #[test]
    fn ioctl_numbers_match_if_tun_h() {
        // _IOW('T', nr, 4-byte type) = (1 << 30) | (4 << 16) | ('T' << 8) | nr.
        assert_eq!(TUNSETIFF(), 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD(), 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ(), 0x4004_54d8);
    }

    #[test]
    fn names_follow_the_kernel_rules() {
        assert!(valid_name("tap0"));
        assert!(valid_name("irqvm-tap-12345"));
        assert!(!valid_name(""));
        assert!(!valid_name("a-name-that-is-too-long"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("eth0:1"));
        assert!(!valid_name(".."));
    }

    #[test]
    fn bad_name_is_refused_before_touching_the_system() {
        assert!(matches!(Tap::open("x/y"), Err(TapError::BadName(_))));
    }

    /// Needs root and /dev/net/tun; skipped otherwise. A second open of the same
    /// single-queue tap is the "in use by another process" case.
    #[test]
    fn second_open_of_the_same_tap_is_busy() {
        let name = format!("irqvmt{}", std::process::id() % 100_000);
        let first = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: cannot create a tap here: {e}");
                return;
            }
        };
        let second = Tap::open(&name);
        assert!(
            matches!(second, Err(TapError::Busy(ref n)) if *n == name),
            "{second:?}"
        );
        let msg = second.unwrap_err().to_string();
        assert!(msg.contains("in use by another process"), "{msg}");
        drop(first);
    }
}
