//! `train`: data-parallel pre-training of LocVTP on training samples (see
//! `locvtp_operators::train`); emits what each step did, and the training
//! state for checkpoint sinks.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use crate::graph::{Graph, PathResolver};
use crate::run::manifest::{training_manifest, TrainingSettings};
use crate::stage_types::checkpoints::Checkpoints;
use crate::stage_types::segment_sampler::SegmentSampler;
use locvtp_model::amp::Precision;
use locvtp_model::device::Device;
use locvtp_model::loss::LossWeights;
use locvtp_model::text::TextEncoder;
use locvtp_model::train::{load_training_checkpoint, read_training_meta, Adam, MultiStepLr, TrainMeta};
use locvtp_model::{LocVtp, ModelConfig};
use locvtp_operators::manifest::RunManifest;
use locvtp_operators::samples::Sample;
use locvtp_operators::text_cache::TextCache;
use locvtp_operators::train::{train, Replica, TrainConfig, TrainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Train {
    /// Model config (TOML).
    pub model: PathBuf,
    /// Hugging Face folder of the frozen text encoder; defaults to the
    /// packaged all-MiniLM-L6-v2.
    #[serde(default)]
    pub text_encoder: Option<PathBuf>,
    /// Where the replicas run; with `auto` or `cuda`, worker i of a
    /// machine uses GPU i mod the GPU count.
    #[serde(default)]
    pub device: Device,
    /// Passes over the training set.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Global batch size, split across workers.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Epochs after which the learning rate drops tenfold.
    #[serde(default = "default_milestones")]
    pub milestones: Vec<usize>,
    /// Temperature of the coarse contrastive loss.
    #[serde(default = "one")]
    pub tau: f64,
    /// Weight of the splice (temporal order) loss.
    #[serde(default = "one")]
    pub w_splice: f64,
    /// Weight of the four fine-grained losses.
    #[serde(default = "default_w_fg")]
    pub w_fg: f64,
    /// Also checkpoint every this many steps, besides every epoch.
    #[serde(default)]
    pub checkpoint_every_steps: Option<usize>,
    /// Continue from the latest checkpoint (`last.safetensors`) of the
    /// checkpoints folder.
    #[serde(default = "yes")]
    pub resume: bool,
    /// Weights to start from when not resuming.
    #[serde(default)]
    pub init_checkpoint: Option<PathBuf>,
    /// Parts each global batch is split into, each with its own in-batch
    /// negatives and random draws, spread over the workers. Default: one per
    /// worker. Fixing it makes runs on different numbers of workers take the
    /// same steps.
    #[serde(default)]
    pub micro_batches: Option<usize>,
    /// `auto` (bf16 autocast on CUDA, fp32 elsewhere), `fp32` or `bf16`.
    #[serde(default)]
    pub precision: Precision,
    /// Keep the frozen text encoder's outputs in the per-user store
    /// (`LOCVTP_CACHE`, by default ~/.cache/locvtp-flow/text-embeddings),
    /// so each caption is encoded once across epochs and runs. Its memory
    /// is bounded; its disk grows with the captions (about 4 bytes x
    /// hidden size x (words + 1) each).
    #[serde(default = "yes")]
    pub text_store: bool,
    /// Resume even though the checkpoint's run manifest records other
    /// settings or data than this run has (the differences are logged).
    /// Without it such a resume stops with exit code 2 and lists them.
    #[serde(default)]
    pub accept_changed_settings: bool,
    /// libtorch threads per worker for the model's CPU work (0: libtorch's
    /// default, one per core). How many threads split a sum decides how
    /// it is rounded, so fixing this makes losses repeat exactly on
    /// machines with other core counts.
    #[serde(default)]
    pub torch_threads: usize,
}

fn default_epochs() -> usize {
    50
}

fn default_batch_size() -> usize {
    128
}

fn default_lr() -> f64 {
    0.001
}

fn default_milestones() -> Vec<usize> {
    vec![20, 40]
}

fn one() -> f64 {
    1.0
}

fn default_w_fg() -> f64 {
    10.0
}

fn yes() -> bool {
    true
}

/// What a training run starts from.
#[derive(Debug)]
pub struct Trainer {
    pub model: ModelConfig,
    pub text_encoder: PathBuf,
    /// The checkpoint the run resumes from, and where it stood.
    pub resume: Option<(PathBuf, TrainMeta)>,
    /// Whether a checkpoints sink wants the training state.
    pub snapshots: bool,
    /// What this run's steps depend on, for every checkpoint it writes.
    pub manifest: RunManifest,
    /// The manifest of the checkpoint it resumes, if that has one.
    pub resumed_manifest: Option<RunManifest>,
}

impl Trainer {
    /// Steps already taken by the checkpoint the run resumes from.
    pub fn first_step(&self) -> u64 {
        self.resume.as_ref().map(|(_, m)| m.step as u64).unwrap_or(0)
    }
}

/// The folder of the checkpoints sink fed by train stage `train`, if any.
pub fn checkpoints_dir(graph: &Graph, train: &str) -> Option<PathBuf> {
    graph.consumers(train).into_iter().find_map(|s| s.options::<Checkpoints>().map(|c| c.dir.clone()))
}

/// Where train stage `name` resumes: the `last.safetensors` of its
/// checkpoints folder, when it resumes and the file exists.
pub fn resume_point(graph: &Graph, name: &str, train: &Train) -> anyhow::Result<Option<(PathBuf, TrainMeta)>> {
    let Some(dir) = checkpoints_dir(graph, name).filter(|_| train.resume) else { return Ok(None) };
    let last = dir.join("last.safetensors");
    if !last.exists() {
        return Ok(None);
    }
    let meta = read_training_meta(&last)?;
    Ok(Some((last, meta)))
}

/// Caption embeddings are cached per user, so that every run on the same
/// captions with the same encoder reuses them (`LOCVTP_CACHE`, by default
/// `~/.cache/locvtp-flow`).
fn text_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("LOCVTP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/locvtp-flow")))?;
    Some(base.join("text-embeddings"))
}

impl StageType for Train {
    const TYPE: &'static str = "train";
    const ABOUT: &'static str =
        "Pre-trains LocVTP data-parallel on training samples; emits each step's losses and the training state.";
    const INPUTS: &'static [Port] = &[Port { name: "samples", kind: DataKind::Samples }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Training);
    type Prepared = Trainer;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("model", &mut self.model);
        paths.input_opt("text_encoder", &mut self.text_encoder);
        paths.input_opt("init_checkpoint", &mut self.init_checkpoint);
    }

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("epochs", self.epochs);
        checks.at_least_one("batch_size", self.batch_size);
        checks.positive("lr", self.lr);
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            checks.error("milestones", "must be strictly increasing");
        }
        checks.positive("tau", self.tau);
        checks.non_negative("w_splice", self.w_splice);
        checks.non_negative("w_fg", self.w_fg);
        if let Some(steps) = self.checkpoint_every_steps {
            checks.at_least_one("checkpoint_every_steps", steps);
        }
        if let Some(m) = self.micro_batches {
            checks.at_least_one("micro_batches", m);
        }
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Trainer> {
        let model = match ModelConfig::from_toml_file(&self.model) {
            Ok(m) => m,
            Err(e) => {
                checks.fail("model", &e);
                return None;
            }
        };
        if let Err(e) = self.device.check_available() {
            checks.fail("device", &e);
        }
        if let (Some(sampler), Some(input)) = (ctx.input_options::<SegmentSampler>(0), ctx.input(0)) {
            let name = &input.name;
            let wanted = [
                ("num_segments", sampler.num_segments as i64, model.num_segments),
                ("frames_per_segment", sampler.frames_per_segment as i64, model.frames_per_segment),
                ("frame_size", i64::from(sampler.decode.frame_size), model.frame_size),
            ];
            for (key, given, expected) in wanted {
                if given != expected {
                    checks.error_in(
                        name,
                        key,
                        format!(
                            "{given}, but the model of stages.{}.model is built for {key} = {expected} ({})",
                            ctx.stage.name,
                            self.model.display()
                        ),
                    );
                }
            }
        }
        let text_dir = match self.text_encoder.clone().or_else(locvtp_model::text::default_text_encoder_dir) {
            Some(dir) => dir,
            None => {
                checks.error(
                    "text_encoder",
                    "not set, and the packaged all-MiniLM-L6-v2 was not found (run scripts/setup.sh)",
                );
                return None;
            }
        };
        match TextEncoder::load(&text_dir, tch::Device::Cpu) {
            Ok(text) if text.hidden_size() != model.text_dim => checks.error(
                "text_encoder",
                format!(
                    "{}: hidden size {}, but the model's text_dim is {} ({})",
                    text_dir.display(),
                    text.hidden_size(),
                    model.text_dim,
                    self.model.display()
                ),
            ),
            Ok(_) => {}
            Err(e) => checks.error("text_encoder", format!("{}: {e:#}", text_dir.display())),
        }
        if let Some(init) = &self.init_checkpoint {
            if !init.is_file() {
                checks.error("init_checkpoint", format!("{}: no such file", init.display()));
            }
        }
        let resume = match resume_point(ctx.graph, &ctx.stage.name, self) {
            Ok(r) => r,
            Err(e) => {
                checks.error("resume", format!("{e:#}; set stages.{}.resume = false to start afresh", ctx.stage.name));
                None
            }
        };
        let mut trained_with_same_model = true;
        if let Some((path, _)) = &resume {
            let trained_with = locvtp_model::checkpoint::read_safetensors_metadata(path)
                .ok()
                .and_then(|m| m.get("model_config").cloned())
                .and_then(|c| serde_json::from_str::<ModelConfig>(&c).ok());
            trained_with_same_model = trained_with.as_ref() == Some(&model);
            if !trained_with_same_model {
                checks.error(
                    "resume",
                    format!(
                        "{} was trained with another model config than {}; set stages.{}.resume = false (or remove the checkpoints) to start afresh",
                        path.display(),
                        self.model.display(),
                        ctx.stage.name
                    ),
                );
            }
        }
        // A micro-batch of one sample has no in-batch negative (its coarse
        // loss is 0) and no other sample to splice with.
        let parts = self.micro_batches.unwrap_or(ctx.shape.workers()).max(1);
        let settings = TrainingSettings { model: &model, text_encoder: &text_dir, micro_batches: parts };
        let manifest = training_manifest(ctx.graph, &ctx.stage.name, &settings);
        let resumed_manifest = match resume.as_ref().map(|(path, _)| (path, RunManifest::read(path))) {
            Some((_, Ok(m))) => m,
            Some((path, Err(e))) => {
                checks.error("resume", format!("{}: {e:#}", path.display()));
                None
            }
            None => None,
        };
        if let (Some((path, _)), Some(then)) = (&resume, &resumed_manifest) {
            let changed = manifest.setting_differences(then);
            if !changed.is_empty() {
                let list = changed.iter().map(|c| format!("\n    {c}")).collect::<String>();
                if self.accept_changed_settings {
                    tracing::warn!("resuming {} with changed settings (as asked):{list}", path.display());
                } else if trained_with_same_model {
                    checks.error(
                        "resume",
                        format!(
                            "{} was trained with other settings (checkpoint's -> this run's):{list}\n  restore them, set stages.{name}.accept_changed_settings = true to continue anyway, or stages.{name}.resume = false to start afresh",
                            path.display(),
                            name = ctx.stage.name
                        ),
                    );
                }
            }
        }
        if parts * 2 > self.batch_size {
            let key = if self.micro_batches.is_some() { "micro_batches" } else { "batch_size" };
            checks.error(
                key,
                format!(
                    "a batch of {} in {parts} micro-batches (one per worker unless micro_batches is set) leaves fewer than 2 samples in some; use at most {} micro-batches or a larger batch",
                    self.batch_size,
                    self.batch_size / 2
                ),
            );
        }
        let snapshots = checkpoints_dir(ctx.graph, &ctx.stage.name).is_some();
        checks.is_empty().then_some(Trainer {
            model,
            text_encoder: text_dir,
            resume,
            snapshots,
            manifest,
            resumed_manifest,
        })
    }

    fn build<'s>(
        &self,
        trainer: Arc<Trainer>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let samples = inputs.take::<Sample>(0)?;
        if self.torch_threads > 0 {
            // OpenMP keeps the thread count per calling thread: this is
            // the worker thread that runs the replica.
            tch::set_num_threads(self.torch_threads as i32);
        }
        let device = self.device.for_worker(ctx.device_slot());
        if device.is_cuda() {
            // Sample shapes are fixed; cuDNN's autotuner pays off.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let seed = ctx.graph.run.seed;
        let mut model = LocVtp::new(&trainer.model, device, seed as i64);
        let adam = match &trainer.resume {
            Some((path, meta)) => {
                let (adam, _) = load_training_checkpoint(path, &mut model)
                    .map_err(|e| ctx.error(format!("resuming from {}: {e:#}", path.display())))?;
                if ctx.index() == 0 {
                    tracing::info!("resuming from {} (epoch {}, step {})", path.display(), meta.epoch, meta.step);
                }
                adam
            }
            None => {
                if let Some(init) = &self.init_checkpoint {
                    locvtp_model::checkpoint::load_weights(&mut model.vs, init)
                        .map_err(|e| ctx.error(format!("{}: {e:#}", init.display())))?;
                }
                Adam::new(&model)
            }
        };
        let encoder = TextEncoder::load(&trainer.text_encoder, device)
            .map_err(|e| ctx.error(format!("{}: {e:#}", trainer.text_encoder.display())))?;
        let store = if self.text_store { text_cache_dir() } else { None };
        let text = TextCache::new(encoder, store).map_err(|e| ctx.error(format!("text store: {e:#}")))?;
        let sampler = ctx.graph.stage(&ctx.stage.inputs[0]).and_then(|s| s.options::<SegmentSampler>());
        let frame_size = sampler.map(|s| s.decode.frame_size as usize).unwrap_or(trainer.model.frame_size as usize);
        let cfg = TrainConfig {
            stage: ctx.stage.name.clone(),
            weights: LossWeights { tau: self.tau, splice: self.w_splice, fg: self.w_fg },
            schedule: MultiStepLr {
                lr: self.lr,
                milestones: self.milestones.iter().map(|&m| m as i64).collect(),
                gamma: 0.1,
            },
            seed,
            num_segments: trainer.model.num_segments as usize,
            frames_per_segment: trainer.model.frames_per_segment as usize,
            frame_size,
            micro_batches: self.micro_batches.unwrap_or(ctx.peers()).max(1),
            precision: self.precision,
            snapshots: trainer.snapshots,
            snapshot_every: self.checkpoint_every_steps.map(|k| k as u64),
            manifest: trainer.manifest.clone(),
        };
        let replica = Replica { model, adam, text };
        let events = train(samples, cfg, replica, trainer.first_step(), ctx.run.clone());
        Ok(Some(TrainEvent::wrap(events)))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{at_times, config, run_stage, TestGraph};
    use locvtp_operators::samples::{Sample, StepInfo};
    use locvtp_operators::train::{SnapshotReason, TrainEvent};
    use std::sync::Arc;

    #[test]
    fn each_step_reports_every_loss_and_the_epoch_end_hands_over_the_state() {
        let t = TestGraph::new();
        let graph = t.graph(&format!(
            "[stages.train]\ntype = \"train\"\ninputs = [\"samples\"]\nmodel = \"{}\"\ndevice = \"cpu\"\nbatch_size = 2\nepochs = 1\n\n\
             [stages.checkpoints]\ntype = \"checkpoints\"\ninputs = [\"train\"]\n",
            config("c3d-tiny.toml").display()
        ));
        let out = run_stage::<TrainEvent>(&graph, "train", |scope| {
            let sample = |step: u64, slot: u32| Sample {
                at: StepInfo { step, epoch: 0, epoch_end: step == 1, steps_total: 2 },
                slot,
                video: Arc::from("v"),
                text: format!("a shape moves {step} {slot}"),
                pixels: vec![(step * 50 + u64::from(slot) * 20) as u8; 3 * 16 * 112 * 112 * 3],
            };
            let samples = vec![sample(0, 0), sample(0, 1), sample(1, 0), sample(1, 1)];
            vec![Sample::wrap(at_times(scope, samples.into_iter().map(|s| (s.at.step, s)).collect()))]
        });
        let steps: Vec<_> = out
            .items
            .iter()
            .filter_map(|(_, e)| match e {
                TrainEvent::Step(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(steps.len(), 2);
        for r in &steps {
            assert_eq!(r.samples, 2);
            for term in ["total", "coarse", "splice", "fg_vid", "fg_word", "fg_vid_ctx", "fg_word_ctx"] {
                let v = r.terms.iter().find(|(k, _)| k == term).map(|t| t.1).unwrap_or(f64::NAN);
                assert!(v.is_finite(), "{term} = {v}");
            }
        }
        let snapshots: Vec<_> = out
            .items
            .iter()
            .filter_map(|(_, e)| match e {
                TrainEvent::Snapshot(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(snapshots.len(), 1, "one epoch end");
        assert_eq!(snapshots[0].reason, SnapshotReason::EpochEnd);
        assert_eq!((snapshots[0].state.meta.epoch, snapshots[0].state.meta.step), (1, 2));
        // The schedule travels with the state, for exports to PyTorch.
        let schedule: serde_json::Value = serde_json::from_str(&snapshots[0].state.meta.extra["lr_schedule"]).unwrap();
        assert_eq!(schedule, serde_json::json!({"lr": 0.001, "milestones": [20, 40], "gamma": 0.1}));
    }
}
