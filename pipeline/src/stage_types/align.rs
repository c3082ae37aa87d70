//! `align`: a video's narration meets its probed metadata (joined by video
//! id) and its cues become caption clips fitted to the video's duration.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use locvtp_narration::align::AlignConfig;
use locvtp_operators::{Narration, VideoCaptions, VideoMeta};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Options of `align`: how cues merge into caption clips.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Align {
    #[serde(flatten)]
    pub config: AlignConfig,
}

impl StageType for Align {
    const TYPE: &'static str = "align";
    const ABOUT: &'static str =
        "Merges each video's cues into caption clips of at least min_seconds, fitted to the video's duration.";
    const INPUTS: &'static [Port] =
        &[Port { name: "narration", kind: DataKind::Narration }, Port { name: "meta", kind: DataKind::VideoMeta }];
    const OUTPUT: Option<DataKind> = Some(DataKind::CaptionClips);
    type Prepared = ();

    fn validate(&self, checks: &mut Checks) {
        let c = &self.config;
        checks.positive("min_seconds", c.min_seconds);
        checks.positive("max_seconds", c.max_seconds);
        checks.non_negative("min_clip_seconds", c.min_clip_seconds);
        checks.at_least_one("max_words", c.max_words);
        if let Err(e) = c.validate() {
            checks.error("", e.to_string());
        }
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
        let narration = inputs.take::<Narration>(0)?;
        let meta = inputs.take::<VideoMeta>(1)?;
        let (captions, errors) = locvtp_operators::align::align(narration, meta, self.config.clone());
        ctx.report_errors(errors);
        Ok(Some(VideoCaptions::wrap(captions)))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_narration::{Cue, VideoCues};
    use locvtp_operators::{Narration, Reason, VideoCaptions, VideoItem, VideoMeta};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn cues_become_clips_within_the_video_and_the_rest_is_reported() {
        let t = TestGraph::new();
        let graph = t.graph(
            "[stages.captions]\ntype = \"align\"\ninputs = [\"narration\", \"meta\"]\nmin_seconds = 1.0\nmax_seconds = 4.0\n",
        );
        let out = run_stage::<VideoCaptions>(&graph, "captions", |scope| {
            let meta = VideoMeta {
                video: VideoItem { id: Arc::from("v"), path: "/v.mp4".into() },
                duration_us: 2_000_000,
                fps_micro: 25_000_000,
                frames: 50,
            };
            let cues = vec![
                Cue { start: 0.0, end: 0.5, text: "a red".into(), words: vec![] },
                Cue { start: 0.5, end: 1.2, text: "circle".into(), words: vec![] },
                Cue { start: 3.0, end: 4.0, text: "after the end".into(), words: vec![] },
            ];
            let narration = Narration::new(&VideoCues { video_id: "v".into(), cues });
            vec![Narration::wrap(vec![narration].to_stream(scope)), VideoMeta::wrap(vec![meta].to_stream(scope))]
        });
        assert_eq!(out.items.len(), 1);
        let clips = &out.items[0].1.clips;
        assert_eq!(clips.len(), 1);
        assert_eq!(clips[0].text, "a red circle");
        assert_eq!((clips[0].start_s, clips[0].end_s), (0.0, 1.2));
        assert_eq!(out.errors.len(), 1);
        assert!(matches!(out.errors[0].reason, Reason::CaptionDropped { .. }));
    }
}
