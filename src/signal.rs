//! SIGINT/SIGTERM: the first one asks the run to stop after the current step (it then writes
//! a checkpoint and a summary with status `interrupted`); a second one exits at once with
//! status 130. Every file qlstm writes is written atomically, so that exit corrupts nothing.

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
    let _ = FLAG.set(flag);
    Ok(())
}

/// Has a stop been requested?
pub fn interrupted() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}
