//! `summary.json`, written beside a run's outputs.

use super::Cluster;
use crate::graph::Graph;
use locvtp_operators::RunStats;
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
pub struct RunSummary {
    pub graph: String,
    pub topology: String,
    pub workers: usize,
    pub processes: usize,
    pub videos: VideoCounts,
    pub clips: u64,
    pub frames_decoded: u64,
    /// Decoding passes over videos in this process: one per video (and
    /// epoch), however many clips each serves.
    pub decode_passes: u64,
    pub wall_seconds: f64,
    pub throughput: Throughput,
    pub encoder_busy_share: f64,
    /// Batches the encoder ran, each padded to the configured batch size.
    pub encoder_batches: u64,
    pub outputs: BTreeMap<String, String>,
    pub errors_file: Option<String>,
    /// Set when the run itself failed (as opposed to some of its items).
    pub fatal: Option<String>,
    /// Stopped by a signal before its input was done; finished work is kept
    /// and the same command resumes.
    pub interrupted: bool,
    /// Training runs: caption clips, steps taken, samples per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub videos_per_s: f64,
    pub clips_per_s: f64,
    pub frames_per_s: f64,
}

impl RunSummary {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        graph: &Graph,
        topology: &str,
        cluster: &Cluster,
        wall: Duration,
        videos: VideoCounts,
        stats: &RunStats,
        outputs: BTreeMap<String, String>,
        fatal: Option<String>,
    ) -> RunSummary {
        let secs = wall.as_secs_f64().max(1e-9);
        let clips = RunStats::get(&stats.clips_written);
        let frames = RunStats::get(&stats.frames_decoded);
        let busy = RunStats::get(&stats.encoder_busy_ns) as f64;
        let wait = RunStats::get(&stats.encoder_wait_ns) as f64;
        let errors = graph.run.output_dir.join("errors.jsonl");
        RunSummary {
            graph: graph.file.display().to_string(),
            topology: topology.into(),
            workers: cluster.workers(),
            processes: cluster.processes,
            videos: videos.clone(),
            clips,
            frames_decoded: frames,
            decode_passes: RunStats::get(&stats.decode_passes),
            wall_seconds: wall.as_secs_f64(),
            throughput: Throughput {
                videos_per_s: videos.processed as f64 / secs,
                clips_per_s: clips as f64 / secs,
                frames_per_s: frames as f64 / secs,
            },
            encoder_busy_share: if busy + wait > 0.0 { busy / (busy + wait) } else { 0.0 },
            encoder_batches: RunStats::get(&stats.encoder_batches),
            outputs,
            errors_file: errors.exists().then(|| errors.display().to_string()),
            fatal,
            interrupted: false,
            training: None,
        }
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
        if let Some(t) = &self.training {
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
            for (name, path) in &self.outputs {
                eprintln!("output {name}: {path}");
            }
            if let Some(e) = &self.errors_file {
                eprintln!("per-item errors: {e}");
            }
            return;
        }
        eprintln!(
            "done: {} processed, {} skipped (already done), {} failed of {} videos; {} clips in {:.1}s ({:.2} clips/s, {:.2} videos/s)",
            v.processed, v.skipped, v.failed, v.total, self.clips, self.wall_seconds, self.throughput.clips_per_s, self.throughput.videos_per_s
        );
        for (name, path) in &self.outputs {
            eprintln!("output {name}: {path}");
        }
        if let Some(e) = &self.errors_file {
            eprintln!("per-item errors: {e}");
        }
    }
}
