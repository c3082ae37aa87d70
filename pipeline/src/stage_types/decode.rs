//! `decode`: each video decoded in one sequential FFmpeg pass on its own
//! thread, resized and centre-cropped to square frames, sent on in chunks.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use locvtp_media::decode::DecodeOptions;
use locvtp_operators::decode::{decode, DecodeConfig};
use locvtp_operators::{FrameMsg, VideoItem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Options of `decode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Decode {
    /// Videos decoded at once per worker, each on its own thread.
    pub threads: usize,
    /// Frame chunks buffered between the decoder threads and the dataflow;
    /// a full queue pauses decoding.
    pub queue: usize,
    #[serde(flatten)]
    pub decode: DecodeOptions,
}

impl Default for Decode {
    fn default() -> Self {
        Decode { threads: 2, queue: 32, decode: DecodeOptions::default() }
    }
}

/// The checks every stage that decodes shares.
pub fn validate_decode(decode: &DecodeOptions, checks: &mut Checks) {
    checks.at_least_one("frame_size", decode.frame_size as usize);
    checks.at_least_one("chunk_frames", decode.chunk_frames);
}

impl StageType for Decode {
    const TYPE: &'static str = "decode";
    const ABOUT: &'static str = "Decodes each video once with FFmpeg into square RGB frames, on dedicated threads.";
    const INPUTS: &'static [Port] = &[Port { name: "videos", kind: DataKind::VideoFiles }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Frames);
    type Prepared = ();

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("threads", self.threads);
        checks.at_least_one("queue", self.queue);
        validate_decode(&self.decode, checks);
    }

    fn prepare(&self, _ctx: &PrepareContext<'_>, _checks: &mut Checks) -> Option<()> {
        Some(())
    }

    fn build<'s>(
        &self,
        _: Arc<()>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let videos = inputs.take::<VideoItem>(0)?;
        let cfg = DecodeConfig {
            stage: ctx.stage.name.clone(),
            options: self.decode,
            threads: self.threads,
            queue: self.queue,
        };
        Ok(Some(FrameMsg::wrap(decode(videos, cfg, ctx.run.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_media::synth::{write_video, Background, Colour, Motion, Scene, Shape, SynthSpec};
    use locvtp_operators::{FrameMsg, VideoItem};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn every_frame_arrives_in_order_and_a_bad_file_fails_alone() {
        let t = TestGraph::new();
        let good = t.path("good.mp4");
        let scene = Scene {
            start_s: 0.0,
            end_s: 1.0,
            shape: Shape::Square,
            colour: Colour::Blue,
            motion: Motion::Right,
            background: Background::Grey,
        };
        let frames = write_video(&SynthSpec::new(48, 32, (20, 1), 1.0, vec![scene]), &good).unwrap();
        std::fs::write(t.path("bad.mp4"), b"nothing").unwrap();
        let graph =
            t.graph("[stages.decode]\ntype = \"decode\"\ninputs = [\"videos\"]\nframe_size = 16\nchunk_frames = 4\n");
        let items = vec![
            VideoItem { id: Arc::from("good"), path: good },
            VideoItem { id: Arc::from("bad"), path: t.path("bad.mp4") },
        ];
        let out =
            run_stage::<FrameMsg>(&graph, "decode", move |scope| vec![VideoItem::wrap(items.clone().to_stream(scope))]);
        let mut next = 0;
        let mut ended = None;
        let mut failed = Vec::new();
        for (_, msg) in &out.items {
            match msg {
                FrameMsg::Chunk { chunk, .. } => {
                    assert_eq!(chunk.first_index, next);
                    assert_eq!(chunk.frame_bytes(), 16 * 16 * 3);
                    next += chunk.len() as u64;
                }
                FrameMsg::End { frames, .. } => ended = Some(*frames),
                FrameMsg::Failed(e) => failed.push(e.video_id.clone()),
            }
        }
        assert_eq!(next, frames);
        assert_eq!(ended, Some(frames));
        assert_eq!(failed, ["bad"]);
    }
}
