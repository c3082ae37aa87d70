//! `c3d_encode`: clips from any number of videos in fixed-shape batches on
//! a dedicated model thread (GPU or CPU); one feature per clip.
//!
//! Its prepare also works out what decides the features' values, their
//! [`RunAttrs`] (weights, layer, model, precision, and the frame size and
//! clip geometry of the stages upstream), which the feature writers record
//! and compare with what an output already holds before resuming it.

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
use locvtp_store::RunAttrs;
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
    /// What decides the values of the features this stage emits.
    pub attrs: RunAttrs,
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

impl C3dEncode {
    /// The attributes of this stage's features, with `weights` the
    /// checkpoint's SHA-256 (or `random-init:<seed>`).
    fn attrs(
        &self,
        ctx: &PrepareContext<'_>,
        model: &ModelConfig,
        weights: String,
        clip_frames: usize,
        stride: usize,
    ) -> RunAttrs {
        let tail = ctx.upstream::<DenseClips>().map(|(_, clips)| clips.tail).unwrap_or_default();
        let frame_size = ctx.upstream::<Decode>().map_or(model.frame_size as u32, |(_, d)| d.decode.frame_size);
        // Process 0's first worker writes the outputs, so its device decides
        // what `auto` means for them.
        let device = self.device.for_worker(ctx.shape.device_slot(ctx.shape.local_workers().start));
        RunAttrs {
            checkpoint: weights,
            layer: self.layer.name().to_string(),
            model: serde_json::to_string(model).expect("a model config serializes"),
            precision: if self.precision.autocast(device) { "bf16" } else { "fp32" }.to_string(),
            frame_size,
            clip_frames: clip_frames as u32,
            stride: stride as u32,
            tail: serde_json::to_value(tail).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        }
    }
}

/// The attributes of the features reaching the stage of `ctx`, from the
/// nearest `c3d_encode` upstream; `None` when that stage did not prepare
/// (it reported why).
pub fn upstream_attrs(ctx: &PrepareContext<'_>) -> Option<RunAttrs> {
    if ctx.upstream::<C3dEncode>().is_none() {
        return Some(RunAttrs { checkpoint: "unknown".into(), ..RunAttrs::default() });
    }
    ctx.upstream_prepared::<C3dEncode>().map(|encoder| encoder.attrs.clone())
}

/// Why a writer cannot resume an output that holds features made with
/// other settings: `held` says what it holds, `differences` what differs
/// (see [`RunAttrs::differences`]), `fresh` how to start again, and
/// `elsewhere` which options choose another output.
pub fn resume_conflict(held: &str, differences: &[String], fresh: &str, elsewhere: &str) -> String {
    format!(
        "{held} with other settings than this run's, and resuming would mix their features with this run's in \
         one output. What differs: {}. To start fresh, {fresh}; to resume, run with the earlier settings; or \
         write elsewhere ({elsewhere})",
        differences.join("; ")
    )
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
        let weights = match &self.checkpoint {
            Some(path) if !path.is_file() => {
                checks.error("checkpoint", format!("{}: no such file", path.display()));
                None
            }
            Some(path) if checks.is_empty() => {
                // Built once here so that a checkpoint of another shape stops
                // the run before any work.
                let cfg = self.config(&ctx.stage.name, &model, tch::Device::Cpu, ctx.graph.run.seed);
                match load_encoder(&cfg).and_then(|_| locvtp_model::checkpoint::file_sha256(path)) {
                    Ok(sha) => Some(sha),
                    Err(e) => {
                        checks.fail("checkpoint", &e);
                        None
                    }
                }
            }
            Some(_) => None,
            None => Some(format!("random-init:{}", ctx.graph.run.seed)),
        };
        let weights = weights.filter(|_| checks.is_empty())?;
        let attrs = self.attrs(ctx, &model, weights, clip_frames, stride);
        Some(Encoder { model, clip_frames, stride, attrs })
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

    #[test]
    fn the_features_attributes_gather_weights_model_and_preprocessing() {
        use crate::engine::{prepare, ClusterShape, Mode};
        let t = TestGraph::new();
        std::fs::create_dir_all(t.path("videos")).unwrap();
        let stages = |checkpoint: &str| {
            format!(
                "[stages.videos]\ntype = \"video_files\"\ndir = \"{}\"\n\n\
                 [stages.decode]\ntype = \"decode\"\ninputs = [\"videos\"]\n\n\
                 [stages.clips]\ntype = \"dense_clips\"\ninputs = [\"decode\"]\nstride = 8\ntail = \"drop\"\n\n\
                 [stages.encode]\ntype = \"c3d_encode\"\ninputs = [\"clips\"]\nmodel = \"{}\"\ndevice = \"cpu\"\n\
                 layer = \"fc6\"\n{checkpoint}\n\
                 [stages.write]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\n",
                t.path("videos").display(),
                config("c3d-tiny.toml").display()
            )
        };
        let attrs = |text: &str| {
            let prepared = prepare(&t.graph(text), &ClusterShape::single(), Mode::Check).unwrap();
            prepared.stages["encode"].downcast_ref::<super::Encoder>().unwrap().attrs.clone()
        };
        let random = attrs(&stages(""));
        assert_eq!(random.checkpoint, "random-init:0");
        assert_eq!((random.layer.as_str(), random.precision.as_str(), random.tail.as_str()), ("fc6", "fp32", "drop"));
        assert_eq!((random.frame_size, random.clip_frames, random.stride), (112, 16, 8));
        let model: serde_json::Value = serde_json::from_str(&random.model).unwrap();
        assert_eq!(model["c3d"]["channels"], serde_json::json!([2, 4, 4, 8, 8]));

        // Weights are named by their SHA-256.
        let model = locvtp_model::ModelConfig::from_toml_file(&config("c3d-tiny.toml")).unwrap();
        let weights = t.path("weights.safetensors");
        let net = locvtp_model::LocVtp::new(&model, tch::Device::Cpu, 7);
        let tensors = locvtp_model::checkpoint::named_variables(&net.vs);
        locvtp_model::checkpoint::write_safetensors(&weights, &tensors, &Default::default()).unwrap();
        let trained = attrs(&stages(&format!("checkpoint = \"{}\"\n", weights.display())));
        assert_eq!(trained.checkpoint, locvtp_model::checkpoint::file_sha256(&weights).unwrap());
        assert_eq!(trained.differences(&random).len(), 1, "{:?}", trained.differences(&random));
    }
}
