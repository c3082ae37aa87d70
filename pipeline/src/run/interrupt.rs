//! Graceful stop. The first SIGINT (Ctrl-C) or SIGTERM asks the run to take
//! no new work and to keep what it has finished (the control dataflow
//! tells every process of the cluster), so that the same command resumes;
//! a second one ends the process at once.

use locvtp_operators::{RunShared, StopCause};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;

/// Routes SIGINT and SIGTERM to `run` for the rest of the process.
pub fn install(run: Arc<RunShared>) {
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle signals ({e}): a signal will end the run without keeping work in flight");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if run.stopping() && matches!(run.stop_cause(), Some(StopCause::Signal(_))) {
                eprintln!("second signal: stopping at once");
                // `_exit`: other threads are inside libtorch and FFmpeg, and
                // the libraries' exit handlers could crash under them.
                unsafe { libc::_exit(128 + signal) };
            }
            eprintln!(
                "stopping: no new work is started; what is in flight finishes and is kept (a second signal stops at once)"
            );
            run.request_stop(StopCause::Signal(signal));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for signals ({e})");
    }
}
