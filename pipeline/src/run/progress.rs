//! Run progress: a bar with rate and ETA on a terminal, plain periodic log
//! lines (every `run.log_every_s`) otherwise. A run counts videos until
//! training reports its first step; from then on it counts steps, with the
//! epoch, the loss and samples/s.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use locvtp_operators::{RunShared, RunStats, TrainingProgress};
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

fn videos_total(s: &RunStats) -> u64 {
    RunStats::get(&s.videos_total)
}

fn videos_done(s: &RunStats) -> u64 {
    RunStats::get(&s.videos_done) + RunStats::get(&s.videos_failed)
}

/// Seconds left as a log line shows them: `42s`, `3m05s`, `1h02m`, or `?`
/// while there is no rate to go by.
fn eta_text(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => {
            let s = s.round() as u64;
            match s {
                0..60 => format!("{s}s"),
                60..3600 => format!("{}m{:02}s", s / 60, s % 60),
                _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
            }
        }
        _ => "?".into(),
    }
}

/// The training bar's message: what the bar itself does not show.
fn step_message(p: &TrainingProgress) -> String {
    format!("| epoch {}, loss {:.4}, {:.1} samples/s", p.epoch + 1, p.loss, p.samples_per_s)
}

/// The plain progress lines of a run whose output is not a terminal.
pub(crate) struct PlainLines {
    started: Instant,
    /// The first step this display saw, and when: steps per second count
    /// from there, so that a resumed run's earlier steps do not inflate
    /// the rate.
    first_step: Option<(u64, Instant)>,
}

impl PlainLines {
    pub(crate) fn new(started: Instant) -> PlainLines {
        PlainLines { started, first_step: None }
    }

    /// The line that reports `run` at `now`.
    pub(crate) fn line(&mut self, run: &RunShared, now: Instant) -> String {
        match run.training() {
            Some(p) => self.training_line(&p, now),
            None => self.videos_line(&run.stats, now),
        }
    }

    fn training_line(&mut self, p: &TrainingProgress, now: Instant) -> String {
        let (first, since) = *self.first_step.get_or_insert((p.step, now));
        let secs = now.saturating_duration_since(since).as_secs_f64();
        let steps_per_s = (p.step > first && secs > 0.0).then(|| (p.step - first) as f64 / secs);
        let left = p.steps_total.saturating_sub(p.step);
        let percent = if p.steps_total > 0 { 100.0 * p.step as f64 / p.steps_total as f64 } else { 0.0 };
        format!(
            "progress: step {}/{} ({percent:.0}%), epoch {}, loss {:.4}, {:.1} samples/s, ETA {}",
            p.step,
            p.steps_total,
            p.epoch + 1,
            p.loss,
            p.samples_per_s,
            eta_text(steps_per_s.map(|r| left as f64 / r))
        )
    }

    fn videos_line(&self, stats: &RunStats, now: Instant) -> String {
        let (n, total) = (videos_done(stats), videos_total(stats));
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let rate = n as f64 / secs.max(1e-9);
        let eta = (rate > 0.0).then(|| total.saturating_sub(n) as f64 / rate);
        format!(
            "progress: {n}/{total} videos, {} clips, {rate:.2} videos/s, ETA {}, {} failed",
            RunStats::get(&stats.clips_encoded),
            eta_text(eta),
            RunStats::get(&stats.videos_failed)
        )
    }
}

/// The terminal display: the videos bar, replaced by a bar of steps once
/// training reports its first step.
struct Bars {
    started: Instant,
    /// Where the bars draw: stderr, or nowhere in tests.
    target: fn() -> ProgressDrawTarget,
    videos: ProgressBar,
    steps: Option<ProgressBar>,
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("static template").progress_chars("=> ")
}

impl Bars {
    fn new(run: &RunShared, target: fn() -> ProgressDrawTarget) -> Bars {
        let videos = ProgressBar::with_draw_target(Some(videos_total(&run.stats)), target());
        videos.set_style(bar_style("{elapsed_precise} [{bar:30}] {pos}/{len} videos {per_sec} ETA {eta} {msg}"));
        Bars { started: Instant::now(), target, videos, steps: None }
    }

    /// Shows where `run` stands now.
    fn update(&mut self, run: &RunShared) {
        let stats = &run.stats;
        match (run.training(), &self.steps) {
            (Some(p), None) => {
                self.videos.finish_and_clear();
                // A resumed run starts at its checkpoint's step; the ETA
                // counts from there.
                let bar = ProgressBar::with_draw_target(Some(p.steps_total), (self.target)()).with_position(p.step);
                bar.set_style(bar_style("{elapsed_precise} [{bar:30}] step {pos}/{len} ETA {eta} {msg}"));
                bar.reset_eta();
                bar.set_message(step_message(&p));
                self.steps = Some(bar);
            }
            (Some(p), Some(bar)) => {
                bar.set_length(p.steps_total);
                bar.set_position(p.step);
                bar.set_message(step_message(&p));
            }
            (None, _) => {
                self.videos.set_length(videos_total(stats));
                self.videos.set_position(videos_done(stats));
                let clips = RunStats::get(&stats.clips_encoded);
                self.videos.set_message(format!(
                    "| {clips} clips, {:.1} clips/s, {} failed",
                    clips as f64 / self.started.elapsed().as_secs_f64().max(1e-9),
                    RunStats::get(&stats.videos_failed)
                ));
            }
        }
    }

    /// The last update, left on the screen.
    fn finish(mut self, run: &RunShared) {
        self.update(run);
        match self.steps {
            Some(bar) => bar.finish(),
            None => self.videos.finish(),
        }
    }
}

fn bars(run: &RunShared, stop: &Receiver<()>) {
    let mut bars = Bars::new(run, ProgressDrawTarget::stderr);
    loop {
        bars.update(run);
        if !tick(stop, Duration::from_millis(200)) {
            break;
        }
    }
    bars.finish(run);
}

impl Progress {
    /// Starts reporting the run's counters until dropped.
    pub fn start(run: Arc<RunShared>, log_every: Duration, quiet: bool) -> Progress {
        let (stop, stopped) = channel::<()>();
        let thread = (!quiet).then(|| {
            std::thread::spawn(move || {
                if std::io::stderr().is_terminal() {
                    bars(&run, &stopped);
                } else {
                    let mut lines = PlainLines::new(Instant::now());
                    let mut last = Instant::now();
                    while tick(&stopped, Duration::from_millis(100)) {
                        if last.elapsed() < log_every {
                            continue;
                        }
                        last = Instant::now();
                        tracing::info!("{}", lines.line(&run, last));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_left_read_as_minutes_and_hours() {
        assert_eq!(eta_text(None), "?");
        assert_eq!(eta_text(Some(f64::INFINITY)), "?");
        assert_eq!(eta_text(Some(41.6)), "42s");
        assert_eq!(eta_text(Some(185.0)), "3m05s");
        assert_eq!(eta_text(Some(3720.0)), "1h02m");
    }

    #[test]
    fn the_terminal_shows_videos_then_steps_with_epoch_loss_and_rate() {
        let run = RunShared::default();
        RunStats::add(&run.stats.videos_total, 4);
        RunStats::add(&run.stats.videos_done, 1);
        let mut bars = Bars::new(&run, ProgressDrawTarget::hidden);
        bars.update(&run);
        assert_eq!((bars.videos.position(), bars.videos.length()), (1, Some(4)));
        assert!(bars.steps.is_none());

        let step = |step, loss| TrainingProgress { step, steps_total: 40, epoch: 2, loss, samples_per_s: 12.5 };
        run.record_step(step(10, 3.21987));
        bars.update(&run);
        assert!(bars.videos.is_finished());
        let steps = bars.steps.as_ref().expect("a bar of steps once training has stepped");
        assert_eq!((steps.position(), steps.length()), (10, Some(40)));
        assert_eq!(steps.message(), "| epoch 3, loss 3.2199, 12.5 samples/s");
        run.record_step(step(11, 3.0));
        bars.update(&run);
        let steps = bars.steps.clone().unwrap();
        assert_eq!((steps.position(), steps.message()), (11, "| epoch 3, loss 3.0000, 12.5 samples/s".to_string()));
        run.record_step(step(40, 1.5));
        bars.finish(&run);
        assert!(steps.is_finished());
        assert_eq!(steps.position(), 40);
    }

    #[test]
    fn lines_count_videos_then_steps_with_a_rate_from_this_run() {
        let run = RunShared::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut lines = PlainLines::new(t0);
        RunStats::add(&run.stats.videos_total, 4);
        RunStats::add(&run.stats.videos_done, 1);
        RunStats::add(&run.stats.clips_encoded, 7);
        assert_eq!(lines.line(&run, at(2)), "progress: 1/4 videos, 7 clips, 0.50 videos/s, ETA 6s, 0 failed");

        // A run resumed at step 10 of 40: no rate yet, so no ETA.
        let step = |step, loss| TrainingProgress { step, steps_total: 40, epoch: 1, loss, samples_per_s: 9.5 };
        run.record_step(step(10, 3.21987));
        assert_eq!(lines.line(&run, at(10)), "progress: step 10/40 (25%), epoch 2, loss 3.2199, 9.5 samples/s, ETA ?");
        // Ten steps in ten seconds: twenty left take twenty seconds, however
        // fast the steps before the resume were.
        run.record_step(step(20, 2.5));
        assert_eq!(
            lines.line(&run, at(20)),
            "progress: step 20/40 (50%), epoch 2, loss 2.5000, 9.5 samples/s, ETA 20s"
        );
        run.record_step(step(40, 1.0));
        assert_eq!(
            lines.line(&run, at(40)),
            "progress: step 40/40 (100%), epoch 2, loss 1.0000, 9.5 samples/s, ETA 0s"
        );
    }
}
