//! Gathers every video's features on worker 0, in memory, for sinks that
//! need all of them at once (evaluation).

use crate::messages::{FeatureMsg, ItemError};
use crate::stats::RunStats;
use crate::writer::ErrorLog;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
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

#[derive(Default)]
struct Acc {
    rows: BTreeMap<u64, Vec<f32>>,
    end: Option<(String, u64, u64, f64)>,
    failed: Option<ItemError>,
}

pub fn collect_features<'s>(
    features: Stream<'s, u64, Vec<FeatureMsg>>,
    errors_path: PathBuf,
    stats: Arc<RunStats>,
    out: Rc<RefCell<BTreeMap<String, CollectedVideo>>>,
) {
    features.sink(Exchange::new(|_: &FeatureMsg| 0), "CollectFeatures", {
        let mut acc: BTreeMap<u64, Acc> = BTreeMap::new();
        let mut errors = ErrorLog::new(errors_path);
        move |(input, frontier)| {
            input.for_each(|cap, data| {
                let t = *cap.least().expect("extraction times are totally ordered");
                let e = acc.entry(t).or_default();
                for msg in data.drain(..) {
                    match msg {
                        FeatureMsg::Feature { index, values, .. } => {
                            e.rows.insert(index, values);
                        }
                        FeatureMsg::End { video, clips, frames, fps } => {
                            e.end = Some((video.to_string(), clips, frames, fps))
                        }
                        FeatureMsg::Failed(err) => e.failed = Some(err),
                    }
                }
            });
            let done: Vec<u64> = acc.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
            for t in done {
                let a = acc.remove(&t).expect("listed");
                match (a.failed, a.end) {
                    (Some(err), _) => {
                        errors.record(&err);
                        RunStats::add(&stats.videos_failed, 1);
                    }
                    (None, Some((id, clips, frames, fps))) if clips > 0 && a.rows.len() as u64 == clips => {
                        let dim = a.rows.values().next().map(Vec::len).unwrap_or(0);
                        let values = a.rows.into_values().flatten().collect();
                        RunStats::add(&stats.videos_done, 1);
                        RunStats::add(&stats.clips_written, clips);
                        out.borrow_mut().insert(id, CollectedVideo { values, clips: clips as usize, dim, fps, frames });
                    }
                    (None, end) => {
                        let id = end.map(|e| e.0).unwrap_or_else(|| "?".into());
                        errors.record(&ItemError {
                            video_id: id,
                            stage: "collect".into(),
                            reason: "incomplete features".into(),
                        });
                        RunStats::add(&stats.videos_failed, 1);
                    }
                }
            }
        }
    });
}
