//! Gathers every video's features on worker 0, in memory, for sinks that
//! need all of them at once (evaluation).

use crate::accumulate::PerTime;
use crate::messages::{FeatureMsg, ItemError};
use crate::run::RunShared;
use crate::stats::RunStats;
use crate::writer::{complete, gather, VideosAt};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// One complete video: features row-major `[clips, dim]`.
#[derive(Debug, Clone, Default)]
pub struct CollectedVideo {
    pub values: Vec<f32>,
    pub clips: usize,
    pub dim: usize,
    pub fps: f64,
    pub frames: u64,
}

/// The complete videos, by id.
pub type Collected = BTreeMap<String, CollectedVideo>;

/// Collects complete videos on worker 0 and hands them to `on_complete`
/// once the input is exhausted; returns the videos that arrived incomplete
/// or failed upstream. `counts`: as [`crate::writer::WriterConfig::counts`];
/// a sink that does not count reports nothing, since every failure here
/// happened upstream.
pub fn collect_features<'s>(
    features: Stream<'s, u64, Vec<FeatureMsg>>,
    counts: bool,
    run: Arc<RunShared>,
    on_complete: impl FnOnce(Collected) + 'static,
) -> Stream<'s, u64, Vec<ItemError>> {
    let is_first = features.scope().index() == 0;
    features.unary_frontier(Exchange::new(|_: &FeatureMsg| 0), "CollectFeatures", move |_cap, _info| {
        let mut open: PerTime<VideosAt> = PerTime::default();
        let mut out = Collected::new();
        let mut on_complete = Some(on_complete);
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let videos = open.entry(&cap);
                for msg in data.drain(..) {
                    gather(videos, msg);
                }
            });
            for (cap, videos) in open.drain_complete(frontier) {
                let mut errors = Vec::new();
                for (id, video) in videos {
                    match complete(&id, video) {
                        Ok(r) => {
                            if counts {
                                RunStats::add(&run.stats.videos_done, 1);
                                RunStats::add(&run.stats.clips_written, u64::from(r.num_clips));
                            }
                            let collected = CollectedVideo {
                                clips: r.num_clips as usize,
                                dim: r.dim as usize,
                                fps: r.fps,
                                frames: r.frames,
                                values: r.features,
                            };
                            out.insert(id, collected);
                        }
                        Err(e) if counts => {
                            RunStats::add(&run.stats.videos_failed, 1);
                            errors.push(e);
                        }
                        Err(_) => {}
                    }
                }
                output.session(&cap).give_iterator(errors.into_iter());
            }
            if frontier.is_empty() && is_first {
                if let Some(done) = on_complete.take() {
                    done(std::mem::take(&mut out));
                }
            }
        }
    })
}
