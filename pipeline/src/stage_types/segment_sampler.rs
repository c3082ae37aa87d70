//! `segment_sampler`: turns caption clips into training samples, T
//! segments of F frames each (TSN sampling, locvtp-method.md section 1),
//! at any corpus size: videos are sharded by a stable hash of their id into
//! a fixed number of logical shards, each shard visits its videos in a
//! seeded order every epoch, decodes each visit once for all its caption
//! clips, and draws its share of every step from a bounded shuffle window
//! (see `locvtp_operators::sampler`). It follows the `train` stage it feeds
//! for `epochs` and `batch_size`, and stays `run.max_in_flight` steps
//! ahead of training.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType, Timing,
};
use crate::stage_types::decode::validate_decode;
use crate::stage_types::train::{resume_point, Train};
use locvtp_media::decode::DecodeOptions;
use locvtp_operators::manifest::RunManifest;
use locvtp_operators::sampler::{sample, SamplerConfig};
use locvtp_operators::samples::Sample;
use locvtp_operators::VideoCaptions;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Options of `segment_sampler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct SegmentSampler {
    /// Segments per sample (T); the model's num_segments (5 in the released
    /// model).
    pub num_segments: usize,
    /// Frames per segment (F); the model's frames_per_segment.
    pub frames_per_segment: usize,
    /// Logical data shards. Fixed for a training run: results do not depend
    /// on how many workers the shards are spread over. More shards than
    /// workers keeps every worker busy.
    pub shards: u32,
    /// Caption clips in each shard's shuffle window: larger mixes videos
    /// better (a step's samples come from more videos) and holds more
    /// decoded frames in memory (window x shards per worker x T x F frames).
    pub window: usize,
    /// Most caption clips one decode pass serves; a video with more is
    /// visited (and decoded) again later in the epoch.
    pub visit_clips: usize,
    /// Videos decoded at once per worker.
    pub threads: usize,
    /// Visits decoded ahead of each shard's window.
    pub prefetch: usize,
    #[serde(flatten)]
    pub decode: DecodeOptions,
}

impl Default for SegmentSampler {
    fn default() -> Self {
        SegmentSampler {
            num_segments: 5,
            frames_per_segment: 16,
            shards: 16,
            window: 16,
            visit_clips: 64,
            threads: 2,
            prefetch: 1,
            decode: DecodeOptions::default(),
        }
    }
}

impl StageType for SegmentSampler {
    const TYPE: &'static str = "segment_sampler";
    const ABOUT: &'static str =
        "Sharded, streaming TSN sampling: each shard decodes a video once per visit and draws its share of every step from a bounded shuffle window.";
    const INPUTS: &'static [Port] = &[Port { name: "captions", kind: DataKind::CaptionClips }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Samples);
    const TIMING: Timing = Timing::Gathers;
    type Prepared = SamplerConfig;

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("num_segments", self.num_segments);
        checks.at_least_one("frames_per_segment", self.frames_per_segment);
        checks.at_least_one("shards", self.shards as usize);
        checks.at_least_one("window", self.window);
        checks.at_least_one("visit_clips", self.visit_clips);
        checks.at_least_one("threads", self.threads);
        validate_decode(&self.decode, checks);
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<SamplerConfig> {
        let trains: Vec<_> = ctx.consumers().into_iter().filter_map(|s| s.options::<Train>().map(|t| (s, t))).collect();
        let [(train_stage, train)] = trains.as_slice() else {
            checks.error("", "the samples must feed exactly one train stage, whose epochs and batch size they follow");
            return None;
        };
        let (first_step, resumed_fingerprint) = match resume_point(ctx.graph, &train_stage.name, train) {
            Ok(Some((path, meta))) => {
                // The train stage reports a manifest it cannot read.
                let manifest = RunManifest::read(&path).ok().flatten();
                (meta.step as u64, manifest.and_then(|m| m.data_fingerprint().map(str::to_string)))
            }
            Ok(None) => (0, None),
            // The train stage reports the unreadable checkpoint.
            Err(_) => return None,
        };
        Some(SamplerConfig {
            stage: ctx.stage.name.clone(),
            seed: ctx.graph.run.seed,
            epochs: train.epochs as u32,
            batch_size: train.batch_size,
            first_step,
            resumed_fingerprint,
            accept_changed_data: train.accept_changed_settings,
            lookahead: ctx.graph.run.max_in_flight as u64,
            shards: self.shards,
            window: self.window,
            visit_clips: self.visit_clips,
            decode: self.decode,
            threads: self.threads,
            prefetch: self.prefetch,
            num_segments: self.num_segments,
            frames_per_segment: self.frames_per_segment,
        })
    }

    fn build<'s>(
        &self,
        cfg: Arc<SamplerConfig>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let captions = inputs.take::<VideoCaptions>(0)?;
        if ctx.index() == 0 && ctx.peers() > cfg.shards as usize {
            // Shards, not workers, are the unit of data parallelism here.
            tracing::warn!(
                "stage `{}`: {} workers but {} shards: {} workers get no data; raise `shards` (it fixes the steps, so choose it once per run)",
                cfg.stage,
                ctx.peers(),
                cfg.shards,
                ctx.peers() - cfg.shards as usize
            );
        }
        let (samples, errors) = sample(captions, (*cfg).clone(), ctx.flow(), ctx.run.clone());
        ctx.report_errors(errors);
        Ok(Some(Sample::wrap(samples)))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{config, run_stage, TestGraph};
    use locvtp_media::synth::{write_video, Background, Colour, Motion, Scene, Shape, SynthSpec};
    use locvtp_operators::samples::Sample;
    use locvtp_operators::{CaptionSpan, VideoCaptions, VideoItem, VideoMeta};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn every_clip_is_one_sample_per_epoch_each_video_decoded_once_per_epoch() {
        let t = TestGraph::new();
        let mut captions = Vec::new();
        for (i, id) in ["a", "b"].iter().enumerate() {
            let path = t.path(&format!("{id}.mp4"));
            let scene = Scene {
                start_s: 0.0,
                end_s: 2.0,
                shape: Shape::Circle,
                colour: if i == 0 { Colour::Red } else { Colour::Blue },
                motion: Motion::Left,
                background: Background::Black,
            };
            write_video(&SynthSpec::new(32, 32, (20, 1), 2.0, vec![scene]), &path).unwrap();
            let meta = VideoMeta {
                video: VideoItem { id: Arc::from(*id), path },
                duration_us: 2_000_000,
                fps_micro: 20_000_000,
                frames: 40,
            };
            let clips = (0..3)
                .map(|k| CaptionSpan {
                    start_s: k as f64 * 0.6,
                    end_s: k as f64 * 0.6 + 0.6,
                    text: format!("{id} clip {k}"),
                })
                .collect();
            captions.push(VideoCaptions { meta, clips });
        }
        let graph = t.graph(&format!(
            "[stages.samples]\ntype = \"segment_sampler\"\ninputs = [\"captions\"]\nnum_segments = 3\n\n\
             [stages.train]\ntype = \"train\"\ninputs = [\"samples\"]\nmodel = \"{}\"\ndevice = \"cpu\"\nepochs = 2\nbatch_size = 2\n",
            config("c3d-tiny.toml").display()
        ));
        let out = run_stage::<Sample>(&graph, "samples", move |scope| {
            vec![VideoCaptions::wrap(captions.clone().to_stream(scope))]
        });
        // 6 clips in batches of 2: 3 steps an epoch, 2 epochs.
        assert_eq!(out.items.len(), 12);
        let mut per_epoch: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (t, s) in &out.items {
            assert_eq!(*t, s.at.step, "a sample leaves at its step");
            assert_eq!(s.pixels.len(), 3 * 16 * 112 * 112 * 3);
            assert_eq!(s.at.epoch_end, s.at.step % 3 == 2);
            assert_eq!(s.at.steps_total, 6);
            per_epoch.entry(s.at.epoch).or_default().push(s.text.clone());
        }
        for texts in per_epoch.values_mut() {
            texts.sort();
            assert_eq!(texts.len(), 6);
            texts.dedup();
            assert_eq!(texts.len(), 6, "each clip once an epoch");
        }
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }
}
