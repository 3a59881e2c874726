//! Ctrl-C handling: SIGINT and SIGTERM set a flag; the converter polls it between chunks, returns an
//! `Interrupted` error, and the GGUF writer's `Drop` removes its temporary file, so an interrupted run
//! leaves nothing behind. (With the default action the process would die at once and leave the
//! dot-temp file.) The handler only stores to an atomic, which is async-signal-safe. No extra crate:
//! `libc` is already a dependency of the dependency tree.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
        // `extern "C" fn(c_int)` that only touches an atomic, and the pointers passed are valid.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
