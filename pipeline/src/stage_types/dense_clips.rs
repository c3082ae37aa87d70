//! `dense_clips`: each video's frames cut into clips of `clip_frames`
//! frames every `stride` frames as they pass (locvtp-method.md section 1).

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use locvtp_media::sampling::Tail;
use locvtp_operators::clips::{dense_clips, DenseClipConfig};
use locvtp_operators::{ClipMsg, FrameMsg};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Options of `dense_clips`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct DenseClips {
    /// Frames per clip (the model's frames_per_segment).
    pub clip_frames: usize,
    /// Frames between the starts of consecutive clips.
    pub stride: usize,
    /// What to do with a last clip that runs past the final frame.
    pub tail: Tail,
}

impl Default for DenseClips {
    fn default() -> Self {
        DenseClips { clip_frames: 16, stride: 16, tail: Tail::Pad }
    }
}

impl StageType for DenseClips {
    const TYPE: &'static str = "dense_clips";
    const ABOUT: &'static str = "Cuts each video's frames into fixed-length clips, padding or dropping the tail.";
    const INPUTS: &'static [Port] = &[Port { name: "frames", kind: DataKind::Frames }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Clips);
    type Prepared = ();

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("clip_frames", self.clip_frames);
        checks.at_least_one("stride", self.stride);
    }

    fn prepare(&self, _ctx: &PrepareContext<'_>, _checks: &mut Checks) -> Option<()> {
        Some(())
    }

    fn build<'s>(
        &self,
        _: Arc<()>,
        _ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let frames = inputs.take::<FrameMsg>(0)?;
        let cfg = DenseClipConfig { clip_frames: self.clip_frames, stride: self.stride, tail: self.tail };
        Ok(Some(ClipMsg::wrap(dense_clips(frames, cfg))))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_media::decode::{FrameChunk, VideoInfo};
    use locvtp_operators::{ClipMsg, FrameMsg};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    fn frames(video: &str, first: u64, n: usize) -> FrameMsg {
        let pixels: Vec<u8> = (0..n).flat_map(|i| vec![(first as usize + i) as u8; 2 * 2 * 3]).collect();
        FrameMsg::Chunk {
            video: Arc::from(video),
            chunk: FrameChunk { first_index: first, frame_size: 2, pixels, times_s: vec![0.0; n] },
        }
    }

    #[test]
    fn ten_frames_in_clips_of_four_every_three_pad_the_tail() {
        let t = TestGraph::new();
        let graph =
            t.graph("[stages.clips]\ntype = \"dense_clips\"\ninputs = [\"decode\"]\nclip_frames = 4\nstride = 3\n");
        let out = run_stage::<ClipMsg>(&graph, "clips", |scope| {
            let info = VideoInfo {
                width: 2,
                height: 2,
                fps: 10.0,
                duration_s: 1.0,
                declared_frames: 10,
                codec: "test".into(),
                rotation: 0,
            };
            let msgs =
                vec![frames("v", 0, 6), frames("v", 6, 4), FrameMsg::End { video: Arc::from("v"), frames: 10, info }];
            vec![FrameMsg::wrap(msgs.to_stream(scope))]
        });
        let mut starts = Vec::new();
        let mut end = None;
        for (_, m) in out.items {
            match m {
                ClipMsg::Clip { index, pixels, .. } => starts.push((index, pixels[0], pixels[pixels.len() - 1])),
                ClipMsg::End { clips, frames, .. } => end = Some((clips, frames)),
                ClipMsg::Failed(e) => panic!("{e}"),
            }
        }
        // ceil(10 / 3) = 4 clips starting at frames 0, 3, 6, 9; the last
        // repeats frame 9.
        assert_eq!(starts, [(0, 0, 3), (1, 3, 6), (2, 6, 9), (3, 9, 9)]);
        assert_eq!(end, Some((4, 10)));
    }
}
