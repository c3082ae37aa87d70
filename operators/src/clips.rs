//! Dense clip sampler: cuts each video's frame stream into clips of
//! `clip_frames` frames every `stride` frames as the frames pass, padding or
//! dropping the tail (locvtp-method.md section 1).

use crate::messages::{ClipMsg, FrameMsg};
use locvtp_media::sampling::{DenseClipper, Tail};
use std::collections::HashMap;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

#[derive(Debug, Clone, Copy)]
pub struct DenseClipConfig {
    pub clip_frames: usize,
    pub stride: usize,
    pub tail: Tail,
}

pub fn dense_clips<'s>(frames: Stream<'s, u64, Vec<FrameMsg>>, cfg: DenseClipConfig) -> Stream<'s, u64, Vec<ClipMsg>> {
    frames.unary(Pipeline, "DenseClips", move |_cap, _info| {
        // One clipper per video being decoded by this worker.
        let mut open: HashMap<Arc<str>, (DenseClipper, u64)> = HashMap::new();
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for msg in data.drain(..) {
                    match msg {
                        FrameMsg::Chunk { video, chunk } => {
                            let (clipper, emitted) = open.entry(video.clone()).or_insert_with(|| {
                                (DenseClipper::new(cfg.clip_frames, cfg.stride, cfg.tail, chunk.frame_bytes()), 0)
                            });
                            for i in 0..chunk.len() {
                                for clip in clipper.push(chunk.frame(i)) {
                                    *emitted += 1;
                                    session.give(ClipMsg::Clip {
                                        video: video.clone(),
                                        index: clip.index,
                                        pixels: clip.pixels,
                                    });
                                }
                            }
                        }
                        FrameMsg::End { video, frames, info } => {
                            let mut clips = 0;
                            if let Some((mut clipper, emitted)) = open.remove(&video) {
                                clips = emitted;
                                for clip in clipper.finish() {
                                    clips += 1;
                                    session.give(ClipMsg::Clip {
                                        video: video.clone(),
                                        index: clip.index,
                                        pixels: clip.pixels,
                                    });
                                }
                            }
                            session.give(ClipMsg::End { video, clips, frames, fps: info.fps });
                        }
                        FrameMsg::Failed(e) => {
                            open.remove(e.video_id.as_str());
                            session.give(ClipMsg::Failed(e));
                        }
                    }
                }
            });
        }
    })
}
