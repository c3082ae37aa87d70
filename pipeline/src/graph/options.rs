//! The `[run]` table: options of the run as a whole.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::paths::PathResolver;
use crate::engine::Checks;

/// The `[run]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunOptions {
    /// Where the run writes its outputs; relative output paths of stages are
    /// relative to it.
    pub output_dir: PathBuf,
    /// Seed for every random choice of the run.
    #[serde(default)]
    pub seed: u64,
    /// Videos in flight per worker between a source and the ends of its
    /// flow (a writer, a gathering stage): bounds memory.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Seconds between progress log lines when not on a terminal.
    #[serde(default = "default_log_every_s")]
    pub log_every_s: f64,
}

fn default_max_in_flight() -> usize {
    8
}

fn default_log_every_s() -> f64 {
    10.0
}

impl RunOptions {
    pub(crate) fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("output_dir", &mut self.output_dir);
    }

    pub(crate) fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("max_in_flight", self.max_in_flight);
        checks.positive("log_every_s", self.log_every_s);
    }

    /// The run's per-item error log.
    pub fn errors_file(&self) -> PathBuf {
        self.output_dir.join("errors.jsonl")
    }
}
