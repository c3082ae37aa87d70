//! Data-parallel training. Timestamps are global optimiser steps. Each
//! worker holds a replica; a step runs in four operators:
//!
//! 1. [`forward`]: once the frontier says a step's samples are complete,
//!    each worker runs forward and backward on its micro-batches and sends
//!    each micro-batch's gradient in chunks to the chunks' owners;
//! 2. [`reduce`]: each chunk's owner sums the micro-batches in their fixed
//!    order (so the sum does not depend on how many workers computed them)
//!    and sends the mean to every worker;
//! 3. [`apply`]: every replica takes the same Adam step; worker 0 copies
//!    the state for the checkpoint sinks when they need it;
//! 4. [`replicas`]: worker 0 compares the replicas' parameter checksums and
//!    emits the step's report, or fails the run at the first difference.
//!
//! The next forward waits until the previous step has been applied.

mod apply;
mod assemble;
mod forward;
mod reduce;
mod replicas;

/// The gradient exchange on its own (what `locvtp-flow bench --exchange`
/// measures): micro-batch gradients in shards, and the mean shards every
/// worker receives.
pub mod exchange {
    pub use super::assemble::AssembledMean;
    pub use super::forward::GradPart;
    pub use super::reduce::{reduce, MeanShard};
    pub use super::{chunk_range, chunks};
}

use crate::manifest::RunManifest;
use crate::run::RunShared;
use crate::samples::{Sample, StepInfo};
use crate::text_cache::TextCache;
use locvtp_model::loss::LossWeights;
use locvtp_model::train::{Adam, GradientLayout, MultiStepLr, TrainingSnapshot};
use locvtp_model::LocVtp;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::Stream;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The stage's name in the graph, for messages.
    pub stage: String,
    pub weights: LossWeights,
    pub schedule: MultiStepLr,
    pub seed: u64,
    pub num_segments: usize,
    pub frames_per_segment: usize,
    pub frame_size: usize,
    /// Parts of a global batch (slot % micro_batches), each a separate
    /// loss computation; part `m` runs on worker `m % workers`.
    pub micro_batches: usize,
    pub precision: locvtp_model::amp::Precision,
    /// Whether a sink wants the training state (checkpoints): it is then
    /// copied at every epoch end, every `snapshot_every` steps, and after
    /// each step once the run is stopping.
    pub snapshots: bool,
    pub snapshot_every: Option<u64>,
    /// The run's settings, written with the data fingerprint into every
    /// checkpoint.
    pub manifest: RunManifest,
}

/// One replica, its optimiser and frozen text encoder (behind its cache).
pub struct Replica {
    pub model: LocVtp,
    pub adam: Adam,
    pub text: TextCache,
}

/// What one step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub at: StepInfo,
    pub lr: f64,
    pub samples: u32,
    /// Each loss term, averaged over the step's samples.
    pub terms: Vec<(String, f64)>,
    pub samples_per_s: f64,
    /// Share of the worker's time spent waiting for data since the last
    /// step.
    pub data_wait_share: f64,
    /// Captions run through the text encoder so far by this process; it
    /// stops growing once every caption is cached.
    pub text_encoder_forwards: u64,
    pub worker: u32,
    /// Sum of every parameter tensor after the step: equal on all replicas.
    pub checksum: Vec<f64>,
}

impl StepReport {
    /// The total loss.
    pub fn total(&self) -> f64 {
        self.terms.iter().find(|(k, _)| k == "total").map(|t| t.1).unwrap_or(f64::NAN)
    }

    /// What the progress display shows of this step.
    pub fn progress(&self) -> crate::run::TrainingProgress {
        crate::run::TrainingProgress {
            step: self.at.step + 1,
            steps_total: self.at.steps_total,
            epoch: self.at.epoch,
            loss: self.total(),
            samples_per_s: self.samples_per_s,
        }
    }
}

/// Why the training state was copied after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    EpochEnd,
    /// Every `snapshot_every` steps.
    Periodic,
    /// The run is stopping for a signal: the last step before the stop.
    Stop,
}

/// The training state after a step, for the checkpoint sinks.
#[derive(Debug)]
pub struct Snapshot {
    pub at: StepInfo,
    pub reason: SnapshotReason,
    pub state: TrainingSnapshot,
}

/// What the train stage emits, on worker 0, once per step.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Step(StepReport),
    Snapshot(Arc<Snapshot>),
    /// What a grounding trainer reports besides steps and snapshots.
    Grounding(Arc<crate::grounding::GroundingEvent>),
}

/// State one worker's operators share: the replica, and where training is.
struct Shared {
    replica: Replica,
    layout: GradientLayout,
    /// Every step below this one has been applied.
    next_step: u64,
    forward_activator: Option<timely::scheduling::Activator>,
    last_apply: Instant,
    wait: Duration,
    busy: Duration,
    /// Snapshots taken by `apply` for `replicas` to emit (worker 0).
    snapshots: VecDeque<Arc<Snapshot>>,
}

/// Trains on `samples` from step `first_step` on; emits one report per
/// step (and the snapshots) on worker 0.
pub fn train<'s>(
    samples: Stream<'s, u64, Vec<Sample>>,
    cfg: TrainConfig,
    replica: Replica,
    first_step: u64,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<TrainEvent>> {
    let layout = GradientLayout::of(&replica.model);
    let shared = Rc::new(RefCell::new(Shared {
        replica,
        layout,
        next_step: first_step,
        forward_activator: None,
        last_apply: Instant::now(),
        wait: Duration::ZERO,
        busy: Duration::ZERO,
        snapshots: VecDeque::new(),
    }));
    let parts = forward::forward(samples, shared.clone(), cfg.clone(), run.clone());
    let means = reduce::reduce(parts, cfg.micro_batches.max(1));
    let reports = apply::apply(means, shared.clone(), cfg.clone(), run.clone());
    replicas::check(reports, shared, cfg, run)
}

/// Floats in one chunk of a flat gradient: the unit of the exchange. Large
/// messages cost timely's network buffers copies (its 1 MB receive buffers
/// copy the unfinished message at their end into the next), small ones a
/// system call each; 128 KB chunks measured best on loopback, 64 KB and
/// 256 KB within noise of them. Chunk `c` is summed by worker `c mod
/// workers`, which spreads the work whatever the worker count.
pub const CHUNK_FLOATS: usize = 1 << 15;

/// Chunks of a flat gradient of `total` floats.
pub fn chunks(total: usize) -> usize {
    total.div_ceil(CHUNK_FLOATS).max(1)
}

/// The floats of chunk `c`.
pub fn chunk_range(total: usize, c: usize) -> std::ops::Range<usize> {
    (c * CHUNK_FLOATS).min(total)..((c + 1) * CHUNK_FLOATS).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_vector_once() {
        for total in [0usize, 1, 7, CHUNK_FLOATS, CHUNK_FLOATS + 1, 3 * CHUNK_FLOATS - 5] {
            let covered: Vec<usize> = (0..chunks(total)).flat_map(|c| chunk_range(total, c)).collect();
            assert_eq!(covered, (0..total).collect::<Vec<_>>());
        }
    }
}
