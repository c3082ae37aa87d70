//! What the operators of one process share about the run as a whole: its
//! counters, whether to stop taking new work, and fatal failures. A fatal
//! failure is recorded here (with the stage and the cause) instead of
//! panicking, and asks every source of the cluster to stop, so that the
//! run ends with a clear error and keeps what it finished.

use crate::stats::RunStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

/// A failure of the run itself, as opposed to one of its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("stage `{stage}`: {message}")]
pub struct FatalError {
    /// The graph's name of the stage that failed.
    pub stage: String,
    /// The cause, with its context.
    pub message: String,
    /// The run resumed a checkpoint trained on other settings or data: a
    /// configuration problem (exit 2), not a failure of the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume_mismatch: bool,
}

impl FatalError {
    pub fn new(stage: impl Into<String>, message: impl Into<String>) -> FatalError {
        FatalError { stage: stage.into(), message: message.into(), resume_mismatch: false }
    }
}

/// Why a run stops before its input is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCause {
    /// A signal (SIGINT, SIGTERM) reached a process of the cluster.
    Signal(i32),
    /// A stage failed somewhere in the cluster.
    Failure,
}

/// Shared by every operator of a process.
#[derive(Debug, Default)]
pub struct RunShared {
    pub stats: RunStats,
    /// Set once anything asks the run to stop; sources check it before
    /// starting new work.
    stopping: AtomicBool,
    /// Signal number of the stop, or -1 for a failure; 0 while running.
    cause: AtomicI32,
    /// A source stopped before its input was exhausted.
    cut_short: AtomicBool,
    fatal: Mutex<Option<FatalError>>,
    /// What stages produced, by stage name: output paths and notes for the
    /// summary.
    outputs: Mutex<BTreeMap<String, serde_json::Value>>,
    /// Input files that sources passed over, by reason.
    skipped_files: Mutex<BTreeMap<String, SkippedFiles>>,
    /// What the training data hash to, once the sampler knows it.
    data_fingerprint: Mutex<Option<String>>,
    /// The last training step, once there is one.
    training: Mutex<Option<TrainingProgress>>,
}

/// Where training stands after a step: what the progress display shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingProgress {
    /// The step's number, from 1, counting the steps of the run this one
    /// resumed.
    pub step: u64,
    /// Steps of the whole run, all epochs.
    pub steps_total: u64,
    /// The step's epoch, from 0.
    pub epoch: u32,
    /// The step's total loss.
    pub loss: f64,
    /// Training samples per second at that step.
    pub samples_per_s: f64,
}

/// Input files passed over for one reason: how many, and the first few.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFiles {
    pub count: u64,
    /// The first [`SkippedFiles::EXAMPLES`] paths, to look at.
    pub examples: Vec<String>,
}

impl SkippedFiles {
    pub const EXAMPLES: usize = 10;
}

impl RunShared {
    /// True once the run should take no new work.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Asks the run to stop; the first cause is kept.
    pub fn request_stop(&self, cause: StopCause) {
        let code = match cause {
            StopCause::Signal(s) => s,
            StopCause::Failure => -1,
        };
        let _ = self.cause.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Tells the run that a source left work undone because of a stop.
    pub fn mark_cut_short(&self) {
        self.cut_short.store(true, Ordering::SeqCst);
    }

    /// True when some source left work undone: the run did not complete,
    /// and a stop that came after the last item changes nothing.
    pub fn cut_short(&self) -> bool {
        self.cut_short.load(Ordering::SeqCst)
    }

    /// Why the run is stopping, if it is.
    pub fn stop_cause(&self) -> Option<StopCause> {
        match self.cause.load(Ordering::SeqCst) {
            0 => None,
            -1 => Some(StopCause::Failure),
            s => Some(StopCause::Signal(s)),
        }
    }

    /// Records a fatal failure of `stage` (the first one is kept) and stops
    /// the run.
    pub fn fail(&self, stage: &str, cause: impl std::fmt::Display) {
        self.record_fatal(FatalError::new(stage, cause.to_string()));
    }

    /// Stops the run because the checkpoint it resumes was trained on other
    /// settings or data than it now has.
    pub fn fail_resume_mismatch(&self, stage: &str, cause: impl std::fmt::Display) {
        self.record_fatal(FatalError { resume_mismatch: true, ..FatalError::new(stage, cause.to_string()) });
    }

    fn record_fatal(&self, error: FatalError) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_none() {
            tracing::error!("stage `{}` failed: {}", error.stage, error.message);
            *fatal = Some(error);
        }
        drop(fatal);
        self.request_stop(StopCause::Failure);
    }

    /// Records the fingerprint of the training data (see the sampler).
    pub fn set_data_fingerprint(&self, fingerprint: String) {
        *self.data_fingerprint.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint);
    }

    /// The fingerprint of the training data, once known.
    pub fn data_fingerprint(&self) -> Option<String> {
        self.data_fingerprint.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The failure recorded in this process, if any.
    pub fn fatal(&self) -> Option<FatalError> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records what stage `stage` produced (a path, or a JSON object of
    /// details), for the run summary.
    pub fn record_output(&self, stage: &str, value: impl Into<serde_json::Value>) {
        self.outputs.lock().unwrap_or_else(|e| e.into_inner()).insert(stage.to_string(), value.into());
    }

    /// Records input files a source passed over for `reason` (a snake_case
    /// name), for the summary.
    pub fn record_skipped_files(&self, reason: &str, files: &[std::path::PathBuf]) {
        let mut all = self.skipped_files.lock().unwrap_or_else(|e| e.into_inner());
        let entry = all.entry(reason.to_string()).or_default();
        entry.count += files.len() as u64;
        let room = SkippedFiles::EXAMPLES.saturating_sub(entry.examples.len());
        entry.examples.extend(files.iter().take(room).map(|p| p.display().to_string()));
    }

    /// Everything recorded with [`RunShared::record_skipped_files`].
    pub fn skipped_files(&self) -> BTreeMap<String, SkippedFiles> {
        self.skipped_files.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything recorded with [`RunShared::record_output`].
    pub fn outputs(&self) -> BTreeMap<String, serde_json::Value> {
        self.outputs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records where training stands after a step.
    pub fn record_step(&self, progress: TrainingProgress) {
        *self.training.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress);
    }

    /// The last step recorded with [`RunShared::record_step`], if any.
    pub fn training(&self) -> Option<TrainingProgress> {
        *self.training.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when a stage of this process failed.
    pub fn failed(&self) -> bool {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_files_add_up_by_reason_keeping_the_first_examples() {
        let run = RunShared::default();
        let files: Vec<std::path::PathBuf> = (0..12).map(|i| format!("/v/f{i:02}.txt").into()).collect();
        run.record_skipped_files("non_video_extension", &files[..7]);
        run.record_skipped_files("non_video_extension", &files[7..]);
        run.record_skipped_files("no_video_stream", &files[..1]);
        let all = run.skipped_files();
        let ext = &all["non_video_extension"];
        assert_eq!(ext.count, 12);
        assert_eq!(ext.examples.len(), SkippedFiles::EXAMPLES);
        assert_eq!((ext.examples[0].as_str(), ext.examples[9].as_str()), ("/v/f00.txt", "/v/f09.txt"));
        assert_eq!(all["no_video_stream"], SkippedFiles { count: 1, examples: vec!["/v/f00.txt".into()] });
    }

    #[test]
    fn the_last_training_step_is_kept() {
        let run = RunShared::default();
        assert_eq!(run.training(), None);
        let step = |step| TrainingProgress { step, steps_total: 8, epoch: 0, loss: 2.5, samples_per_s: 4.0 };
        run.record_step(step(1));
        run.record_step(step(2));
        assert_eq!(run.training(), Some(step(2)));
    }

    #[test]
    fn the_first_cause_and_failure_are_kept() {
        let run = RunShared::default();
        assert!(!run.stopping() && run.stop_cause().is_none());
        run.request_stop(StopCause::Signal(15));
        run.fail("encode", "out of memory");
        run.fail("write", "disk full");
        assert!(run.stopping());
        assert_eq!(run.stop_cause(), Some(StopCause::Signal(15)));
        assert_eq!(run.fatal().unwrap(), FatalError::new("encode", "out of memory"));
    }
}
