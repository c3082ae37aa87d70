//! Run progress: a bar with rate and ETA on a terminal, plain periodic log
//! lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use locvtp_operators::{RunShared, RunStats};
use std::io::IsTerminal;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Progress {
    /// Dropping it wakes the reporting thread at once and ends it, so that a
    /// finished run does not wait out the thread's tick.
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Waits one tick; false once the run has ended.
fn tick(stop: &Receiver<()>, every: Duration) -> bool {
    matches!(stop.recv_timeout(every), Err(RecvTimeoutError::Timeout))
}

impl Progress {
    /// Starts reporting the run's counters until dropped.
    pub fn start(run: Arc<RunShared>, log_every: Duration, quiet: bool) -> Progress {
        let (stop, stopped) = channel::<()>();
        let thread = (!quiet).then(|| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let stats = &run.stats;
                let total = |s: &RunStats| RunStats::get(&s.videos_total);
                let done = |s: &RunStats| RunStats::get(&s.videos_done) + RunStats::get(&s.videos_failed);
                if std::io::stderr().is_terminal() {
                    let bar = ProgressBar::new(total(stats));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{elapsed_precise} [{bar:30}] {pos}/{len} videos {per_sec} ETA {eta} {msg}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    );
                    loop {
                        bar.set_length(total(stats));
                        bar.set_position(done(stats));
                        let clips = RunStats::get(&stats.clips_encoded);
                        bar.set_message(format!(
                            "| {clips} clips, {:.1} clips/s, {} failed",
                            clips as f64 / started.elapsed().as_secs_f64().max(1e-9),
                            RunStats::get(&stats.videos_failed)
                        ));
                        if !tick(&stopped, Duration::from_millis(200)) {
                            break;
                        }
                    }
                    bar.set_position(done(stats));
                    bar.finish();
                } else {
                    let mut last = Instant::now();
                    while tick(&stopped, Duration::from_millis(100)) {
                        if last.elapsed() < log_every {
                            continue;
                        }
                        last = Instant::now();
                        let n = done(stats);
                        let total = total(stats);
                        let secs = started.elapsed().as_secs_f64();
                        let rate = n as f64 / secs.max(1e-9);
                        let eta = if rate > 0.0 { (total.saturating_sub(n)) as f64 / rate } else { f64::NAN };
                        tracing::info!(
                            "progress: {n}/{total} videos, {} clips, {:.2} videos/s, ETA {:.0}s, {} failed",
                            RunStats::get(&stats.clips_encoded),
                            rate,
                            eta,
                            RunStats::get(&stats.videos_failed)
                        );
                    }
                }
            })
        });
        Progress { stop: Some(stop), thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
