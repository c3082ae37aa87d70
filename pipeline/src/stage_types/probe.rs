//! `probe`: each video's duration, frame rate and frame count, read from
//! its container by the worker that owns the video.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use locvtp_operators::{shard_of, ErrorStage, ItemError, Reason, VideoItem, VideoMeta};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::OkErr;

/// Options of `probe` (none).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Probe {}

/// The metadata of one video, or why it cannot be read.
pub fn probe_video(video: VideoItem) -> Result<VideoMeta, ItemError> {
    match locvtp_media::decode::probe(&video.path) {
        Ok(info) => Ok(VideoMeta::from_info(video, &info)),
        Err(e) => Err(ItemError::new(video.id.to_string(), ErrorStage::Probe, Reason::unreadable(&e))),
    }
}

impl StageType for Probe {
    const TYPE: &'static str = "probe";
    const ABOUT: &'static str = "Reads each video's duration, frame rate and frame count from its container.";
    const INPUTS: &'static [Port] = &[Port { name: "videos", kind: DataKind::VideoFiles }];
    const OUTPUT: Option<DataKind> = Some(DataKind::VideoMeta);
    type Prepared = ();

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
        let results = videos.unary::<CapacityContainerBuilder<Vec<Result<VideoMeta, ItemError>>>, _, _, _>(
            Exchange::new(|v: &VideoItem| shard_of(&v.id)),
            "Probe",
            |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        output.session(&cap).give_iterator(data.drain(..).map(probe_video));
                    });
                }
            },
        );
        let (meta, errors) = results.ok_err(|r| r);
        ctx.report_errors(errors);
        Ok(Some(VideoMeta::wrap(meta)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_media::synth::{write_video, Background, Colour, Motion, Scene, Shape, SynthSpec};
    use timely::dataflow::operators::ToStream;

    #[test]
    fn a_video_is_measured_and_a_broken_file_is_named() {
        let t = TestGraph::new();
        let good = t.path("good.mp4");
        let scene = Scene {
            start_s: 0.0,
            end_s: 1.0,
            shape: Shape::Circle,
            colour: Colour::Red,
            motion: Motion::Left,
            background: Background::Black,
        };
        write_video(&SynthSpec::new(32, 32, (25, 1), 1.0, vec![scene]), &good).unwrap();
        let bad = t.path("bad.mp4");
        std::fs::write(&bad, b"not a video").unwrap();
        let graph = t.graph("[stages.meta]\ntype = \"probe\"\ninputs = [\"videos\"]\n");
        let items =
            vec![VideoItem { id: Arc::from("good"), path: good }, VideoItem { id: Arc::from("bad"), path: bad }];
        let out =
            run_stage::<VideoMeta>(&graph, "meta", move |scope| vec![VideoItem::wrap(items.clone().to_stream(scope))]);
        assert_eq!(out.items.len(), 1);
        let meta = &out.items[0].1;
        assert_eq!(&*meta.video.id, "good");
        assert_eq!(meta.fps_micro, 25_000_000);
        assert_eq!(meta.duration_s(), 1.0);
        assert_eq!(out.errors.len(), 1);
        assert_eq!((out.errors[0].video_id.as_str(), out.errors[0].stage), ("bad", ErrorStage::Probe));
    }
}
