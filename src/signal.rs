//! SIGINT/SIGTERM: the first one asks the run to stop after the current step (it then writes
//! a checkpoint and a summary with status `interrupted`); a second one exits at once with
//! status 130. Every file qlstm writes is written atomically, so that exit corrupts nothing.
//! SIGUSR1 is the first kind only, however often it comes: what a sweep passes on to its runs.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Exit status of an interrupted run (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Install the handlers (once per process).
pub fn install() -> Result<()> {
    if FLAG.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the shutdown action sees the flag as it was before this signal.
        signal_hook::flag::register_conditional_shutdown(sig, INTERRUPTED_EXIT, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| Error::new(format!("cannot install signal handlers: {e}")))?;
    }
    // a stop request from a sweep (`request_stop`): the flag only, never an immediate exit
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&flag))
        .map_err(|e| Error::new(format!("cannot install signal handlers: {e}")))?;
    let _ = FLAG.set(flag);
    Ok(())
}

/// Has a stop been requested?
pub fn interrupted() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// Ask another process (a run a sweep started) to stop after its current step: SIGUSR1, which
/// `install` makes set the flag only, so that it never exits a run at once, however many
/// other signals the run also gets. A process that has already exited is no error.
pub fn request_stop(pid: u32) {
    // SAFETY: kill(2) with a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGUSR1);
    }
}
