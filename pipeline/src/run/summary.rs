//! `summary.json`, written beside a run's outputs by process 0, covering
//! every process of the cluster.

use crate::error::RunError;
use crate::graph::Graph;
use locvtp_operators::errors::ErrorTally;
use locvtp_operators::{Counts, FatalError, SkippedFiles};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct VideoCounts {
    pub total: u64,
    pub processed: u64,
    /// Finished by an earlier run of the same command and kept.
    pub skipped: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub videos_per_s: f64,
    pub clips_per_s: f64,
    pub frames_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub graph: String,
    /// The kinds of sinks the graph has, e.g. `hdf5_writer` or
    /// `checkpoints+metrics`.
    pub topology: String,
    pub workers: usize,
    pub processes: usize,
    pub videos: VideoCounts,
    /// Files of the input folders that are not videos of the run, by reason
    /// (`non_video_extension`, `no_video_stream`, `not_media`,
    /// `not_in_list`, ...): how many, and the first few paths.
    pub skipped_files: BTreeMap<String, SkippedFiles>,
    pub clips: u64,
    pub frames_decoded: u64,
    /// Decoding passes over videos: one per video (and epoch), however many
    /// clips each serves.
    pub decode_passes: u64,
    /// Of those, the passes the GPU's video decoder made (`decoder =
    /// "nvdec"`; the rest fell back to the CPU, as the log says).
    pub nvdec_passes: u64,
    pub wall_seconds: f64,
    /// Peak resident memory of this process (process 0 for a cluster), MB.
    pub peak_rss_mb: f64,
    pub throughput: Throughput,
    pub encoder_busy_share: f64,
    /// Batches the encoder ran, each padded to the configured batch size.
    pub encoder_batches: u64,
    /// What each stage produced, by stage name.
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Per-item error lines by stage.
    pub errors_by_stage: BTreeMap<String, u64>,
    pub errors_file: Option<String>,
    /// Set when the run itself failed (as opposed to some of its items).
    pub fatal: Option<FatalError>,
    /// Stopped by a signal before its input was done; finished work is kept
    /// and the same command resumes.
    pub interrupted: bool,
    /// Training runs: caption clips, steps taken, samples per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// The signal that stopped the run, if any.
    #[serde(skip)]
    pub signal: Option<i32>,
    /// The locks of the output folders (process 0), held until this summary
    /// is dropped, after it has been written beside the outputs.
    #[serde(skip)]
    pub locks: Option<std::sync::Arc<super::lock::OutputLocks>>,
}

/// The largest resident set this process has had, in MB.
pub fn peak_rss_mb() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // On Linux `ru_maxrss` is in kilobytes.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        usage.ru_maxrss as f64 / 1024.0
    } else {
        f64::NAN
    }
}

/// Everything a finished run reports, gathered on process 0.
pub struct RunRecord<'a> {
    pub graph: &'a Graph,
    pub workers: usize,
    pub processes: usize,
    pub wall: Duration,
    pub counts: Counts,
    pub tally: &'a ErrorTally,
    pub outputs: BTreeMap<String, serde_json::Value>,
    pub skipped_files: BTreeMap<String, SkippedFiles>,
    pub fatal: Option<FatalError>,
    pub signal: Option<i32>,
}

impl RunSummary {
    pub fn new(r: RunRecord<'_>) -> RunSummary {
        let c = &r.counts;
        let secs = r.wall.as_secs_f64().max(1e-9);
        let (busy, wait) = (c.encoder_busy_ns as f64, c.encoder_wait_ns as f64);
        let errors = r.graph.run.errors_file();
        let failed = r.tally.lost_videos.len() as u64;
        let processed = c.videos_done;
        let has_stage = |name: &str| r.graph.stages.iter().any(|s| s.entry().name == name);
        let training = if has_stage("train_grounding") {
            Some(serde_json::json!({
                "kind": "grounding",
                "steps": c.train_steps,
                "steps_per_s": c.train_steps as f64 / secs,
            }))
        } else if c.train_steps > 0 || has_stage("train") {
            let most = |key: &str| r.outputs.values().filter_map(|v| v[key].as_u64()).max().unwrap_or(0);
            let caption_clips: u64 = r.outputs.values().filter_map(|v| v["caption_clips"].as_u64()).sum();
            let steps_per_epoch = most("steps_per_epoch");
            // Epochs this run worked on (a resumed run may start mid-epoch).
            let epochs = if steps_per_epoch > 0 { c.train_steps.div_ceil(steps_per_epoch).max(1) } else { 1 };
            Some(serde_json::json!({
                "kind": "pretraining",
                "caption_clips": caption_clips,
                "steps": c.train_steps,
                "steps_per_epoch": steps_per_epoch,
                "steps_total": most("steps_total"),
                "first_step": most("first_step"),
                "samples_per_s": c.clips_encoded as f64 / secs,
                "decode_passes": c.decode_passes,
                "decode_passes_per_epoch": c.decode_passes as f64 / epochs as f64,
            }))
        } else {
            None
        };
        RunSummary {
            graph: r.graph.file.display().to_string(),
            topology: r.graph.topology(),
            workers: r.workers,
            processes: r.processes,
            videos: VideoCounts { total: c.videos_total, processed, skipped: c.videos_skipped, failed },
            skipped_files: r.skipped_files,
            clips: if training.is_some() { c.clips_encoded } else { c.clips_written },
            frames_decoded: c.frames_decoded,
            decode_passes: c.decode_passes,
            nvdec_passes: c.nvdec_passes,
            wall_seconds: r.wall.as_secs_f64(),
            peak_rss_mb: peak_rss_mb(),
            throughput: Throughput {
                videos_per_s: processed as f64 / secs,
                clips_per_s: c.clips_written as f64 / secs,
                frames_per_s: c.frames_decoded as f64 / secs,
            },
            encoder_busy_share: if busy + wait > 0.0 { busy / (busy + wait) } else { 0.0 },
            encoder_batches: c.encoder_batches,
            outputs: r.outputs,
            errors_by_stage: r.tally.by_stage.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            errors_file: errors.exists().then(|| errors.display().to_string()),
            fatal: r.fatal,
            interrupted: r.signal.is_some(),
            training,
            signal: r.signal,
            locks: None,
        }
    }

    /// How the run ended, as the command's result. Only process 0 sees
    /// every process's counts; the others judge only failures and stops.
    pub fn outcome(&self, strict: bool, first_process: bool) -> Result<(), RunError> {
        let v = &self.videos;
        if let Some(f) = &self.fatal {
            Err(RunError::Fatal(f.clone()))
        } else if let Some(signal) = self.signal {
            Err(RunError::Interrupted { signal })
        } else if !first_process {
            Ok(())
        } else if v.total > 0 && v.processed + v.skipped == 0 && !self.training_was_complete() {
            Err(RunError::NothingDone { failed: v.failed })
        } else if strict && v.failed > 0 {
            Err(RunError::ItemsFailed { failed: v.failed })
        } else {
            Ok(())
        }
    }

    /// Whether this was a training run resumed from a checkpoint that had
    /// already taken every step: it used no video, and that is no failure.
    pub fn training_was_complete(&self) -> bool {
        self.training.as_ref().is_some_and(|t| {
            let total = t["steps_total"].as_u64().unwrap_or(0);
            total > 0 && t["first_step"].as_u64().unwrap_or(0) >= total
        })
    }

    /// Writes `summary.json` into `dir` atomically; returns its path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("summary.json");
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        locvtp_model::checkpoint::atomic_write(&path, text.as_bytes())?;
        Ok(path)
    }

    pub fn print_table(&self) {
        let v = &self.videos;
        if let Some(t) = self.training.as_ref().filter(|_| self.training_was_complete()) {
            eprintln!(
                "done: training was already complete ({} of {} steps in the checkpoint it resumed); nothing to do",
                t["first_step"], t["steps_total"]
            );
        } else if let Some(t) = self.training.as_ref().filter(|t| t["kind"] == "grounding") {
            eprintln!(
                "done: features of {} videos used, {} failed of {}; {} grounding steps in {:.1}s ({:.2} steps/s)",
                v.processed,
                v.failed,
                v.total,
                t["steps"],
                self.wall_seconds,
                t["steps_per_s"].as_f64().unwrap_or(0.0)
            );
        } else if let Some(t) = &self.training {
            eprintln!(
                "done: {} videos used, {} failed of {}; {} steps over {} caption clips in {:.1}s ({:.2} samples/s)",
                v.processed,
                v.failed,
                v.total,
                t["steps"],
                t["caption_clips"],
                self.wall_seconds,
                t["samples_per_s"].as_f64().unwrap_or(0.0)
            );
        } else {
            eprintln!(
                "done: {} processed, {} skipped (already done), {} failed of {} videos; {} clips in {:.1}s ({:.2} clips/s, {:.2} videos/s)",
                v.processed, v.skipped, v.failed, v.total, self.clips, self.wall_seconds, self.throughput.clips_per_s, self.throughput.videos_per_s
            );
        }
        if !self.skipped_files.is_empty() {
            let counts: Vec<String> = self.skipped_files.iter().map(|(why, f)| format!("{} {why}", f.count)).collect();
            eprintln!("files of the input folders not used as videos: {}", counts.join(", "));
        }
        for (name, output) in &self.outputs {
            eprintln!("output {name}: {output}");
        }
        if let Some(e) = &self.errors_file {
            eprintln!("per-item errors: {e}");
        }
    }
}
