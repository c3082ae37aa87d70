//! Alignment: a video's narration meets its probed metadata (a
//! differential-dataflow join by video id), and its cues become caption
//! clips fitted to the video's real duration. Clips that cannot be used
//! leave as typed errors; the rest of the video goes on.

use crate::messages::{CaptionSpan, ErrorStage, ItemError, Narration, Reason, VideoCaptions, VideoMeta};
use differential_dataflow::AsCollection;
use locvtp_narration::align::{align_video, AlignConfig};
use locvtp_narration::VideoCues;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::OkErr;
use timely::dataflow::Stream;

/// Records as differential updates `(data, time, +1)` at their own time.
fn updates<'s, D: Clone + 'static>(stream: Stream<'s, u64, Vec<D>>) -> Stream<'s, u64, Vec<(D, u64, isize)>> {
    stream.unary::<CapacityContainerBuilder<Vec<(D, u64, isize)>>, _, _, _>(Pipeline, "AsUpdates", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let t = *cap.least().expect("times are totally ordered");
                output.session(&cap).give_iterator(data.drain(..).map(|d| (d, t, 1)));
            });
        }
    })
}

/// The caption clips of one video, and the clips dropped with their reason.
pub fn align_one(meta: VideoMeta, narration: &Narration, config: &AlignConfig) -> (VideoCaptions, Vec<ItemError>) {
    let id = meta.video.id.to_string();
    let cues = VideoCues { video_id: id.clone(), cues: narration.cues() };
    let clamped = align_video(&cues, meta.duration_s(), config);
    let errors = clamped
        .dropped
        .into_iter()
        .map(|d| {
            ItemError::new(
                &id,
                ErrorStage::Align,
                Reason::CaptionDropped { start_s: d.clip.start_s, end_s: d.clip.end_s, why: d.reason },
            )
        })
        .collect();
    let clips =
        clamped.kept.into_iter().map(|c| CaptionSpan { start_s: c.start_s, end_s: c.end_s, text: c.text }).collect();
    (VideoCaptions { meta, clips }, errors)
}

/// Joins each video's metadata with its narration and aligns them.
/// Returns the caption clips per video and the dropped clips.
pub fn align<'s>(
    narration: Stream<'s, u64, Vec<Narration>>,
    meta: Stream<'s, u64, Vec<VideoMeta>>,
    config: AlignConfig,
) -> (Stream<'s, u64, Vec<VideoCaptions>>, Stream<'s, u64, Vec<ItemError>>) {
    let keyed_meta =
        meta.unary::<CapacityContainerBuilder<Vec<(String, VideoMeta)>>, _, _, _>(Pipeline, "KeyMeta", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    output.session(&cap).give_iterator(data.drain(..).map(|m| (m.video.id.to_string(), m)));
                })
            }
        });
    let keyed_narration = narration.unary::<CapacityContainerBuilder<Vec<(String, Narration)>>, _, _, _>(
        Pipeline,
        "KeyNarration",
        |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    output.session(&cap).give_iterator(data.drain(..).map(|n| (n.video_id.clone(), n)));
                })
            }
        },
    );
    let joined = updates(keyed_meta).as_collection().join(updates(keyed_narration).as_collection());
    let results = joined.inner.unary::<CapacityContainerBuilder<Vec<Result<VideoCaptions, ItemError>>>, _, _, _>(
        Pipeline,
        "AlignCaptions",
        move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for ((_id, (meta, narration)), _time, diff) in data.drain(..) {
                        // Every video and narration enters once, so a pair
                        // only ever appears (never retracts).
                        if diff <= 0 {
                            continue;
                        }
                        let (captions, dropped) = align_one(meta, &narration, &config);
                        session.give_iterator(dropped.into_iter().map(Err));
                        session.give(Ok(captions));
                    }
                });
            }
        },
    );
    results.ok_err(|r| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::VideoItem;
    use locvtp_narration::Cue;
    use std::sync::Arc;
    use timely::dataflow::operators::{Capture, ToStream};

    fn meta(id: &str, seconds: f64) -> VideoMeta {
        VideoMeta {
            video: VideoItem { id: Arc::from(id), path: format!("/videos/{id}.mp4").into() },
            duration_us: (seconds * 1e6) as u64,
            fps_micro: 25_000_000,
            frames: (seconds * 25.0) as u64,
        }
    }

    fn cue(start: f64, end: f64, text: &str) -> Cue {
        Cue { start, end, text: text.into(), words: vec![] }
    }

    #[test]
    fn videos_meet_their_narration_and_clips_past_the_end_are_dropped_with_a_reason() {
        let (captions, errors) = timely::example(|scope| {
            let metas = vec![meta("a", 3.0), meta("b", 2.0), meta("no-narration", 2.0)].to_stream(scope);
            let narration = vec![
                Narration::new(&VideoCues {
                    video_id: "a".into(),
                    cues: vec![cue(0.0, 1.5, "a red circle"), cue(1.5, 3.0, "moves left"), cue(5.0, 6.0, "gone")],
                }),
                Narration::new(&VideoCues { video_id: "b".into(), cues: vec![cue(0.0, 2.0, "a blue square")] }),
                Narration::new(&VideoCues { video_id: "unlisted".into(), cues: vec![cue(0.0, 2.0, "nobody")] }),
            ]
            .to_stream(scope);
            let config = AlignConfig { min_seconds: 1.0, max_seconds: 4.0, ..AlignConfig::default() };
            let (captions, errors) = align(narration, metas, config);
            (captions.capture(), errors.capture())
        });
        let mut captions: Vec<VideoCaptions> = crate::testing::drain(captions).into_iter().map(|(_, v)| v).collect();
        captions.sort_by(|x, y| x.meta.cmp(&y.meta));
        assert_eq!(captions.len(), 2, "one result per video with both metadata and narration");
        assert_eq!(&*captions[0].meta.video.id, "a");
        assert_eq!(captions[0].clips.len(), 2);
        assert_eq!(captions[0].clips[0].text, "a red circle");
        assert_eq!(captions[1].clips.len(), 1);
        let errors: Vec<ItemError> = crate::testing::drain(errors).into_iter().map(|(_, v)| v).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].video_id, "a");
        assert!(matches!(errors[0].reason, Reason::CaptionDropped { start_s, .. } if start_s == 5.0));
        assert!(!errors[0].reason.loses_video());
    }
}
