//! Console input: the main thread feeds stdin to the guest's serial port until the VM stops.
//! When stdin is a terminal it is put in raw mode (restored on exit) so keys reach the guest
//! unchanged; Ctrl-A x ends the VM from the terminal.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::serial::Serial;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::vm::{Outcome, Shutdown};

struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> Self {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a properly sized termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_oflag = saved.c_oflag; // keep output processing (\n -> \r\n)
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return RawMode(None);
            }
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes saved in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

const STDIN: u64 = 0;
const STOP: u64 = 1;

/// Serve console input until the shutdown event fires.
pub fn serve(serial: Arc<Mutex<Serial>>, shutdown: &Arc<Shutdown>) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("epoll_create failed: {e}; console input disabled");
            wait_only(shutdown);
            return;
        }
    };
    let _ = epoll.ctl(
        ControlOperation::Add,
        shutdown.evt.as_raw_fd(),
        EpollEvent::new(EventSet::IN, STOP),
    );
    let stdin_ok = epoll
        .ctl(
            ControlOperation::Add,
            0,
            EpollEvent::new(EventSet::IN, STDIN),
        )
        .is_ok();
    let _raw = if stdin_ok {
        Some(RawMode::enter())
    } else {
        None
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut ctrl_a = false;
    let mut events = vec![EpollEvent::default(); 4];
    while !shutdown.stopping() {
        // While input waits for FIFO space, poll instead of blocking on stdin.
        let timeout = if pending.is_empty() { -1 } else { 10 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                log::error!("epoll_wait failed: {e}");
                wait_only(shutdown);
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == STDIN {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a stack buffer of the given length.
                let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    // EOF or error: stop watching stdin, the guest keeps running.
                    let _ = epoll.ctl(ControlOperation::Delete, 0, EpollEvent::default());
                    continue;
                }
                for &b in &buf[..r as usize] {
                    if ctrl_a && b == b'x' {
                        shutdown.finish(Outcome::Failed(
                            "stopped from the console (Ctrl-A x)".into(),
                        ));
                    }
                    ctrl_a = b == 0x01;
                    if !ctrl_a {
                        pending.push(b);
                    }
                }
            }
        }
        if !pending.is_empty() {
            let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
            let n = s.enqueue_input(&pending);
            pending.drain(..n);
        }
    }
    let _ = stdin_ok;
}

fn wait_only(shutdown: &Arc<Shutdown>) {
    while !shutdown.stopping() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
