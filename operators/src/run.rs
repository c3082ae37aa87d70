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

/// Runs `f`, turning a panic into an error that carries the panic's
/// message. tch reports libtorch's errors (CUDA out of memory, a shape the
/// model cannot take) by panicking; caught here, they reach the driver as a
/// [`FatalError`] of the stage, with the operator's context, instead of
/// taking a worker or a model thread down with nothing but a backtrace.
/// The caller stops using what `f` touched once it has failed.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|depth| depth.set(depth.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|depth| depth.set(depth.get() - 1));
    result.map_err(|payload| {
        let message = match (payload.downcast_ref::<String>(), payload.downcast_ref::<&str>()) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.to_string(),
            (None, None) => "a panic without a message".to_string(),
        };
        first_lines(&message)
    })
}

thread_local! {
    /// How many [`catch_panic`] calls the thread is inside.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether a panic of the current thread will be caught by
/// [`catch_panic`] and reported as the run's failure: a panic hook that
/// ends the process on a panic lets these pass.
pub fn panic_is_caught() -> bool {
    CATCHING.with(|depth| depth.get() > 0)
}

/// libtorch's message on one line, without what tch wraps it in (an
/// `unwrap` of `Torch("...")`, escaped) and the C++ backtrace that follows
/// it (`Exception raised from ...`).
fn first_lines(message: &str) -> String {
    let message = message.strip_prefix("called `Result::unwrap()` on an `Err` value: ").unwrap_or(message);
    let message = message.strip_prefix("Torch(\"").unwrap_or(message);
    let head = message.split("Exception raised from").next().unwrap_or(message);
    let head = head.replace("\\n", " ");
    head.split_whitespace().collect::<Vec<_>>().join(" ").trim_end_matches("\")").to_string()
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
    /// Outputs complete under temporary names, put in place only once the
    /// whole run has succeeded (see [`RunShared::settle_outputs`]).
    pending: Mutex<Vec<PendingOutput>>,
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

/// An output a stage has completed and checked, waiting to replace what
/// its path holds until the run as a whole is known to have succeeded: a
/// run that fails or is interrupted after its writer finished (a failure
/// in another stage or process, `--strict` with failed items) leaves the
/// path as an earlier run left it.
pub struct PendingOutput {
    /// The stage that wrote it.
    pub stage: String,
    /// What the summary says about the output once it is in place.
    pub committed: serde_json::Value,
    /// What the summary says when the run does not succeed (where the
    /// finished work is kept for the next run).
    pub kept: serde_json::Value,
    /// Puts the output in place.
    pub commit: Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
}

impl std::fmt::Debug for PendingOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOutput").field("stage", &self.stage).field("committed", &self.committed).finish()
    }
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

    /// Holds `output` until [`RunShared::settle_outputs`].
    pub fn defer_output(&self, output: PendingOutput) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(output);
    }

    /// Once the run's outcome is known: when it `succeeded`, puts every
    /// pending output in place and records it for the summary; otherwise
    /// drops them (their temporary files go, the finished work stays where
    /// the next run resumes from) and records what is kept. Returns the
    /// first output that could not be put in place, as the run's failure.
    pub fn settle_outputs(&self, succeeded: bool) -> Option<FatalError> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut failure = None;
        for output in pending {
            if !succeeded {
                self.record_output(&output.stage, output.kept);
                continue;
            }
            match (output.commit)() {
                Ok(()) => self.record_output(&output.stage, output.committed),
                Err(e) => {
                    tracing::error!("stage `{}`: {e:#}", output.stage);
                    self.record_output(&output.stage, output.kept);
                    failure.get_or_insert(FatalError::new(output.stage, format!("{e:#}")));
                }
            }
        }
        failure
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

    fn pending(stage: &str, fails: bool, log: &std::sync::Arc<Mutex<Vec<String>>>) -> PendingOutput {
        let log = log.clone();
        let name = stage.to_string();
        PendingOutput {
            stage: stage.into(),
            committed: serde_json::json!({ "path": stage }),
            kept: serde_json::json!({ "kept": stage }),
            commit: Box::new(move || {
                if fails {
                    anyhow::bail!("{name}: disk full");
                }
                log.lock().unwrap().push(name);
                Ok(())
            }),
        }
    }

    #[test]
    fn a_libtorch_error_becomes_a_message_instead_of_a_panic() {
        let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        let message = catch_panic(|| a.matmul(&a)).expect_err("shapes [2, 3] and [2, 3] do not multiply");
        assert!(message.contains("cannot be multiplied") && message.contains("2x3"), "{message}");
        assert!(!message.contains('\n') && !message.contains("Exception raised from"), "{message}");
        assert!(message.starts_with("mat1 and mat2 shapes"), "{message}");
        let wrapped = "called `Result::unwrap()` on an `Err` value: Torch(\"Output size is too small\\nException \
                       raised from pool3d_shape_check\\nframe #0: ...\")";
        assert_eq!(first_lines(wrapped), "Output size is too small");
        assert_eq!(first_lines("Output size is too small"), "Output size is too small");
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(catch_panic(panic_is_caught), Ok(true));
        assert!(!panic_is_caught());
        assert_eq!(catch_panic(|| -> i32 { panic!("plain") }), Err("plain".to_string()));
    }

    #[test]
    fn pending_outputs_go_in_place_only_when_the_run_succeeded() {
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let run = RunShared::default();
        run.defer_output(pending("a", false, &log));
        assert_eq!(run.settle_outputs(false), None);
        assert!(log.lock().unwrap().is_empty(), "nothing is put in place for a failed run");
        assert_eq!(run.outputs()["a"], serde_json::json!({ "kept": "a" }));

        let run = RunShared::default();
        run.defer_output(pending("a", false, &log));
        run.defer_output(pending("b", true, &log));
        run.defer_output(pending("c", false, &log));
        let failure = run.settle_outputs(true).expect("b cannot be put in place");
        assert_eq!(failure, FatalError::new("b", "b: disk full"));
        assert_eq!(*log.lock().unwrap(), ["a", "c"]);
        let outputs = run.outputs();
        assert_eq!(outputs["a"], serde_json::json!({ "path": "a" }));
        assert_eq!(outputs["b"], serde_json::json!({ "kept": "b" }));
        assert_eq!(run.settle_outputs(true), None, "each output is settled once");
    }
}
