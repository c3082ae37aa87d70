//! Graceful stop. The first SIGINT (Ctrl-C) or SIGTERM asks the running
//! graph to take no new work and to keep what it has finished, so that the
//! same command resumes; a second one ends the process at once.

use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// The flag the handlers set; installs them on the first call.
pub fn flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the shutdown action runs first and only fires
            // when an earlier signal has already set the flag.
            let installed = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())
                .and_then(|_| signal_hook::flag::register_usize(sig, &SIGNAL, sig as usize))
                .and_then(|_| signal_hook::flag::register(sig, flag.clone()));
            if let Err(e) = installed {
                tracing::warn!("cannot handle signal {sig} ({e}): it will end the run without keeping work in flight");
            }
        }
        flag
    })
    .clone()
}

/// True once a stop was asked for.
pub fn requested(flag: &AtomicBool) -> bool {
    flag.load(Ordering::SeqCst)
}

/// Exit code of a run stopped by a signal: 128 + the signal's number.
pub fn exit_code() -> u8 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 128 + SIGINT as u8,
        s => (128 + s) as u8,
    }
}
