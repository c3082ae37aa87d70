//! `c3d_encode`: clips from any number of videos in fixed-shape batches on
//! a dedicated model thread (GPU or CPU); one feature per clip.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use crate::graph::PathResolver;
use crate::stage_types::decode::Decode;
use crate::stage_types::dense_clips::DenseClips;
use locvtp_model::amp::Precision;
use locvtp_model::device::Device;
use locvtp_model::{Layer, ModelConfig};
use locvtp_operators::encode::{encode, load_encoder, EncodeConfig};
use locvtp_operators::{ClipMsg, FeatureMsg};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `c3d_encode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct C3dEncode {
    /// Model config (TOML), e.g. configs/c3d-full.toml.
    pub model: PathBuf,
    /// Weights (safetensors); without them the model is randomly
    /// initialised from `run.seed`, which only tests the plumbing.
    pub checkpoint: Option<PathBuf>,
    /// The activation written as the clip feature.
    pub layer: Layer,
    /// Where the model runs.
    pub device: Device,
    /// Clips per forward pass; every batch has this shape (padded).
    pub batch_size: usize,
    /// Batches queued for the model thread.
    pub queue: usize,
    /// `auto` (bf16 autocast on CUDA, fp32 elsewhere), `fp32` or `bf16`.
    pub precision: Precision,
}

impl Default for C3dEncode {
    fn default() -> Self {
        C3dEncode {
            model: PathBuf::from("configs/c3d-full.toml"),
            checkpoint: None,
            layer: Layer::Projection,
            device: Device::Auto,
            batch_size: 8,
            queue: 4,
            precision: Precision::Auto,
        }
    }
}

/// The model as the encoder will run it, checked against its inputs.
#[derive(Debug)]
pub struct Encoder {
    pub model: ModelConfig,
    /// `frames_per_segment` frames per clip, every `stride` frames (from
    /// the clip sampler upstream).
    pub clip_frames: usize,
    pub stride: usize,
}

impl C3dEncode {
    /// The encoder's configuration on `device`.
    pub fn config(&self, stage: &str, model: &ModelConfig, device: tch::Device, seed: u64) -> EncodeConfig {
        EncodeConfig {
            stage: stage.to_string(),
            model: model.clone(),
            checkpoint: self.checkpoint.clone(),
            layer: self.layer,
            device,
            batch_size: self.batch_size,
            queue: self.queue,
            seed: seed as i64,
            precision: self.precision,
        }
    }
}

impl StageType for C3dEncode {
    const TYPE: &'static str = "c3d_encode";
    const ABOUT: &'static str = "Encodes clips with C3D (and the projection head) in fixed-shape batches.";
    const INPUTS: &'static [Port] = &[Port { name: "clips", kind: DataKind::Clips }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Features);
    type Prepared = Encoder;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("model", &mut self.model);
        paths.input_opt("checkpoint", &mut self.checkpoint);
    }

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("batch_size", self.batch_size);
        checks.at_least_one("queue", self.queue);
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Encoder> {
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
        let (clip_frames, stride) = match ctx.upstream::<DenseClips>() {
            Some((stage, clips)) => {
                if clips.clip_frames as i64 != model.frames_per_segment {
                    checks.error_in(
                        &stage.name,
                        "clip_frames",
                        format!(
                            "clips of {} frames, but the model of stages.{}.model takes {} (frames_per_segment in {})",
                            clips.clip_frames,
                            ctx.stage.name,
                            model.frames_per_segment,
                            self.model.display()
                        ),
                    );
                }
                (clips.clip_frames, clips.stride)
            }
            None => (model.frames_per_segment as usize, model.frames_per_segment as usize),
        };
        if let Some((stage, decode)) = ctx.upstream::<Decode>() {
            if i64::from(decode.decode.frame_size) != model.frame_size {
                checks.error_in(
                    &stage.name,
                    "frame_size",
                    format!(
                        "frames of {0}x{0}, but the model of stages.{1}.model takes {2}x{2} (frame_size in {3})",
                        decode.decode.frame_size,
                        ctx.stage.name,
                        model.frame_size,
                        self.model.display()
                    ),
                );
            }
        }
        if let Some(path) = &self.checkpoint {
            if !path.is_file() {
                checks.error("checkpoint", format!("{}: no such file", path.display()));
            } else if checks.is_empty() {
                // Built once here so that a checkpoint of another shape stops
                // the run before any work.
                let cfg = self.config(&ctx.stage.name, &model, tch::Device::Cpu, ctx.graph.run.seed);
                if let Err(e) = load_encoder(&cfg) {
                    checks.fail("checkpoint", &e);
                }
            }
        }
        checks.is_empty().then_some(Encoder { model, clip_frames, stride })
    }

    fn build<'s>(
        &self,
        encoder: Arc<Encoder>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let clips = inputs.take::<ClipMsg>(0)?;
        let device = self.device.for_worker(ctx.device_slot());
        let cfg = self.config(&ctx.stage.name, &encoder.model, device, ctx.graph.run.seed);
        Ok(Some(FeatureMsg::wrap(encode(clips, cfg, ctx.run.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{config, run_stage, TestGraph};
    use locvtp_operators::{ClipMsg, FeatureMsg};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn every_clip_gets_a_feature_and_the_end_follows_them() {
        let t = TestGraph::new();
        let graph = t.graph(&format!(
            "[stages.encode]\ntype = \"c3d_encode\"\ninputs = [\"clips\"]\nmodel = \"{}\"\ndevice = \"cpu\"\nbatch_size = 2\n",
            config("c3d-tiny.toml").display()
        ));
        let out = run_stage::<FeatureMsg>(&graph, "encode", |scope| {
            let clip = |i: u64| ClipMsg::Clip {
                video: Arc::from("v"),
                index: i,
                pixels: vec![i as u8 * 40; 16 * 112 * 112 * 3],
            };
            let msgs = vec![
                clip(0),
                clip(1),
                clip(2),
                ClipMsg::End { video: Arc::from("v"), clips: 3, frames: 40, fps: 10.0 },
            ];
            vec![ClipMsg::wrap(msgs.to_stream(scope))]
        });
        let mut indices = Vec::new();
        for (i, (_, m)) in out.items.iter().enumerate() {
            match m {
                FeatureMsg::Feature { index, values, .. } => {
                    assert!(values.iter().all(|v| v.is_finite()));
                    indices.push(*index);
                }
                FeatureMsg::End { clips, .. } => {
                    assert_eq!(i, out.items.len() - 1, "the end comes last");
                    assert_eq!(*clips, 3);
                }
                FeatureMsg::Failed(e) => panic!("{e}"),
            }
        }
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2]);
    }
}
