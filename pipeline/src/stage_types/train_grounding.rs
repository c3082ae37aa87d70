//! `train_grounding`: trains a 2D-TAN style grounding model on a grounding
//! dataset's train split (see `locvtp_operators::grounding`), chooses the
//! epoch on its validation split, and ranks its test split's moments with
//! the chosen weights. Emits each step's loss for `metrics`, the training
//! state for `checkpoints` (a run started again resumes from
//! `last.safetensors`), and the ranked queries for `grounding_eval`.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType, Timing,
};
use crate::graph::PathResolver;
use crate::stage_types::grounding_data::GroundingData;
use crate::stage_types::train::checkpoints_dir;
use locvtp_model::device::Device;
use locvtp_model::moments::recall_key;
use locvtp_model::tan::{TanConfig, TanPreset};
use locvtp_model::text::TextEncoder;
use locvtp_operators::grounding::{train_grounding, GroundingSample, GroundingTrainConfig};
use locvtp_operators::train::TrainEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `train_grounding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainGrounding {
    /// The 2D-TAN configuration followed: `charades_sta` (16 clips, every
    /// span), `activitynet` (64 clips, sparse) or `tacos` (128 clips,
    /// sparse, reported at IoU 0.1/0.3/0.5).
    #[serde(default)]
    pub preset: TanPreset,
    /// Channels of the 2D map (512 in 2D-TAN); smaller widths train in
    /// minutes on a CPU.
    #[serde(default)]
    pub hidden: Option<i64>,
    /// Convolutions over the map; the preset's by default.
    #[serde(default)]
    pub map_layers: Option<i64>,
    /// Their kernel size (odd); the preset's by default.
    #[serde(default)]
    pub kernel: Option<i64>,
    /// Hugging Face folder of the frozen sentence encoder (the one of
    /// pre-training); defaults to the packaged all-MiniLM-L6-v2.
    #[serde(default)]
    pub text_encoder: Option<PathBuf>,
    /// Where the model trains.
    #[serde(default)]
    pub device: Device,
    /// Passes over the training queries (100 in 2D-TAN).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Queries per step (32 in 2D-TAN).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Adam's learning rate (1e-4 in 2D-TAN).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Gradients are scaled down to at most this joint norm (10 in 2D-TAN).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// libtorch threads while training. Fixed so that a run repeats
    /// exactly on the same machine: how a sum is split across threads
    /// changes its rounding.
    #[serde(default = "one")]
    pub threads: usize,
    /// The validation metric that chooses the epoch (`R@1_IoU0.5`, ...,
    /// `mIoU`); R@1 at the preset's middle IoU threshold by default.
    #[serde(default)]
    pub select_on: Option<String>,
    /// Continue from `last.safetensors` of the checkpoints folder.
    #[serde(default = "yes")]
    pub resume: bool,
}

fn default_epochs() -> usize {
    100
}

fn default_batch_size() -> usize {
    32
}

fn default_lr() -> f64 {
    1e-4
}

fn default_grad_clip() -> f64 {
    10.0
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

impl TrainGrounding {
    /// The model for features of width `feature_dim` and sentence vectors of
    /// width `text_dim`: the preset with this stage's overrides.
    pub fn model(&self, feature_dim: i64, text_dim: i64) -> TanConfig {
        let base = self.preset.config(feature_dim, text_dim);
        TanConfig {
            hidden: self.hidden.unwrap_or(base.hidden),
            map_layers: self.map_layers.unwrap_or(base.map_layers),
            kernel: self.kernel.unwrap_or(base.kernel),
            ..base
        }
    }

    /// The metric that chooses the epoch.
    pub fn select_on(&self, model: &TanConfig) -> String {
        self.select_on.clone().unwrap_or_else(|| recall_key(1, model.thresholds[model.thresholds.len() / 2]))
    }
}

/// What the stage's build needs: everything but the device.
#[derive(Debug)]
pub struct GroundingTrainer {
    pub config: GroundingTrainConfig,
}

impl StageType for TrainGrounding {
    const TYPE: &'static str = "train_grounding";
    const ABOUT: &'static str =
        "Trains a 2D-TAN grounding model on clip features; chooses the epoch on validation and ranks the test split.";
    const INPUTS: &'static [Port] = &[Port { name: "queries", kind: DataKind::GroundingQueries }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Training);
    const TIMING: Timing = Timing::Gathers;
    type Prepared = GroundingTrainer;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input_opt("text_encoder", &mut self.text_encoder);
    }

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("epochs", self.epochs);
        checks.at_least_one("batch_size", self.batch_size);
        checks.at_least_one("threads", self.threads);
        checks.positive("lr", self.lr);
        checks.positive("grad_clip", self.grad_clip);
        for (key, value) in [("hidden", self.hidden), ("map_layers", self.map_layers), ("kernel", self.kernel)] {
            if value.is_some_and(|v| v < 1) {
                checks.error(key, "must be at least 1");
            }
        }
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<GroundingTrainer> {
        if let Err(e) = self.device.check_available() {
            checks.fail("device", &e);
        }
        let Some(data) = ctx.input_prepared::<GroundingData>(0) else {
            // A grounding_data stage that failed its own checks said why.
            if ctx.input_options::<GroundingData>(0).is_none() {
                checks.error("inputs", "train_grounding must be fed by a grounding_data stage");
            }
            return None;
        };
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
        let text_dim = match TextEncoder::load(&text_dir, tch::Device::Cpu) {
            Ok(text) => text.hidden_size(),
            Err(e) => {
                checks.error("text_encoder", format!("{}: {e:#}", text_dir.display()));
                return None;
            }
        };
        let model = self.model(data.feature_dim as i64, text_dim);
        if let Err(e) = model.validate() {
            checks.error("preset", format!("{e:#}"));
            return None;
        }
        let select_on = self.select_on(&model);
        let keys: Vec<String> = [1, 5]
            .iter()
            .flat_map(|&n| model.thresholds.iter().map(move |&m| recall_key(n, m)))
            .chain(["mIoU".to_string()])
            .collect();
        if !keys.contains(&select_on) {
            checks.error("select_on", format!("{select_on:?} is not one of {}", keys.join(", ")));
        }
        let dir = checkpoints_dir(ctx.graph, &ctx.stage.name);
        let last = dir.as_ref().map(|d| d.join("last.safetensors")).filter(|p| self.resume && p.exists());
        let model_json = serde_json::to_string(&model).expect("plain data");
        if let Some(path) = &last {
            let stored = locvtp_model::checkpoint::read_safetensors_metadata(path)
                .ok()
                .and_then(|m| m.get("model_config").cloned())
                .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok());
            if stored != serde_json::from_str(&model_json).ok() {
                checks.error(
                    "resume",
                    format!(
                        "{} was trained with another model or features; set stages.{}.resume = false (or remove the checkpoints) to start afresh",
                        path.display(),
                        ctx.stage.name
                    ),
                );
            }
        }
        checks.is_empty().then(|| GroundingTrainer {
            config: GroundingTrainConfig {
                stage: ctx.stage.name.clone(),
                model,
                text_encoder: text_dir,
                device: tch::Device::Cpu,
                seed: ctx.graph.run.seed,
                epochs: self.epochs,
                batch_size: self.batch_size,
                lr: self.lr,
                grad_clip: self.grad_clip,
                threads: self.threads,
                select_on,
                resume: last,
                snapshots: dir.is_some(),
                checkpoints_dir: dir,
            },
        })
    }

    fn build<'s>(
        &self,
        trainer: Arc<GroundingTrainer>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let queries = inputs.take::<GroundingSample>(0)?;
        let mut config = trainer.config.clone();
        config.device = self.device.for_worker(ctx.device_slot());
        let events = train_grounding(queries, config, ctx.run.clone());
        Ok(Some(TrainEvent::wrap(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_with_overrides_and_the_default_selection_metric() {
        let opts: TrainGrounding =
            toml::from_str("preset = \"tacos\"\nhidden = 32\nmap_layers = 2").expect("valid options");
        let m = opts.model(256, 384);
        assert_eq!((m.clips, m.hidden, m.map_layers, m.kernel, m.feature_dim), (128, 32, 2, 5, 256));
        assert_eq!(opts.select_on(&m), "R@1_IoU0.3");
        let charades: TrainGrounding = toml::from_str("").unwrap();
        let m = charades.model(64, 384);
        assert_eq!((m.clips, m.hidden, m.map_layers), (16, 512, 8));
        assert_eq!(charades.select_on(&m), "R@1_IoU0.5");
        assert_eq!((charades.epochs, charades.batch_size, charades.lr), (100, 32, 1e-4));
    }
}
