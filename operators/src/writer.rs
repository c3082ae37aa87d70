//! The feature writer: every worker routes its features to worker 0, which
//! completes a video when the frontier passes its timestamp, appends it to
//! the crash-safe spool, and assembles the one HDF5 file of the run when
//! the input is exhausted. Videos that cannot be written leave as typed
//! errors on the operator's output.

use crate::accumulate::PerTime;
use crate::messages::{ErrorStage, FeatureMsg, ItemError, Reason};
use crate::run::RunShared;
use crate::stats::RunStats;
use locvtp_store::{RunAttrs, Spool, SpoolRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The stage's name in the graph.
    pub stage: String,
    pub path: PathBuf,
    pub dataset: String,
    pub run: RunAttrs,
}

/// One video's features as they arrive, and how it ended.
#[derive(Default)]
pub(crate) struct VideoAcc {
    pub features: BTreeMap<u64, Vec<f32>>,
    /// `(clips, frames, fps)` from the end marker.
    pub end: Option<(u64, u64, f64)>,
    pub failed: Option<ItemError>,
}

/// The videos of one timestamp (one per source worker), by id.
pub(crate) type VideosAt = BTreeMap<String, VideoAcc>;

/// Files `msg` under its video in `videos`.
pub(crate) fn gather(videos: &mut VideosAt, msg: FeatureMsg) {
    match msg {
        FeatureMsg::Feature { video, index, values } => {
            videos.entry(video.to_string()).or_default().features.insert(index, values);
        }
        FeatureMsg::End { video, clips, frames, fps } => {
            videos.entry(video.to_string()).or_default().end = Some((clips, frames, fps))
        }
        FeatureMsg::Failed(e) => {
            let id = e.video_id.clone();
            videos.entry(id).or_default().failed = Some(e)
        }
    }
}

/// A complete video's features as one record, or why there is none.
pub(crate) fn complete(id: &str, video: VideoAcc) -> Result<SpoolRecord, ItemError> {
    let fail = |stage, reason| ItemError::new(id, stage, reason);
    if let Some(e) = video.failed {
        return Err(e);
    }
    let Some((clips, frames, fps)) = video.end else {
        return Err(fail(
            ErrorStage::Write,
            Reason::IncompleteFeatures { expected: 0, got: video.features.len() as u64 },
        ));
    };
    if video.features.len() as u64 != clips || video.features.keys().copied().ne(0..clips) {
        return Err(fail(
            ErrorStage::Write,
            Reason::IncompleteFeatures { expected: clips, got: video.features.len() as u64 },
        ));
    }
    if clips == 0 {
        return Err(fail(ErrorStage::Clips, Reason::NoClip { frames }));
    }
    let dim = video.features.values().next().map(Vec::len).unwrap_or(0);
    Ok(SpoolRecord {
        video_id: id.to_string(),
        num_clips: clips as u32,
        dim: dim as u32,
        fps,
        frames,
        features: video.features.into_values().flatten().collect(),
    })
}

/// Sinks the features into `cfg.path`. `spool` (worker 0 only) holds the
/// records of an earlier, interrupted run of the same command; they are
/// kept and end up in the file too. Returns the videos that could not be
/// written.
pub fn write_features<'s>(
    features: Stream<'s, u64, Vec<FeatureMsg>>,
    cfg: WriterConfig,
    spool: Option<Spool>,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<ItemError>> {
    let pact = Exchange::new(|_: &FeatureMsg| 0);
    features.unary_frontier(pact, "WriteFeatures", move |_cap, _info| {
        let mut open: PerTime<VideosAt> = PerTime::default();
        let mut spool = spool;
        let mut finished = false;
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
                    let stored = complete(&id, video).and_then(|record| match spool.as_mut() {
                        Some(spool) => spool.append(&record).map(|()| record.num_clips).map_err(|e| {
                            ItemError::new(&id, ErrorStage::Write, Reason::Storage { message: format!("{e:#}") })
                        }),
                        None => Err(ItemError::new(
                            &id,
                            ErrorStage::Write,
                            Reason::Storage { message: "the spool is not open".into() },
                        )),
                    });
                    match stored {
                        Ok(clips) => {
                            RunStats::add(&run.stats.videos_done, 1);
                            RunStats::add(&run.stats.clips_written, u64::from(clips));
                        }
                        Err(e) => {
                            RunStats::add(&run.stats.videos_failed, 1);
                            errors.push(e);
                        }
                    }
                }
                output.session(&cap).give_iterator(errors.into_iter());
            }
            if frontier.is_empty() && !finished {
                finished = true;
                if let Some(spool) = spool.take() {
                    finish(&cfg, spool, &run);
                }
            }
        }
    })
}

/// The input is exhausted: assemble the file, or keep the spool for the
/// next run when the run was stopped or failed.
fn finish(cfg: &WriterConfig, spool: Spool, run: &RunShared) {
    if run.cut_short() || run.failed() {
        run.record_output(&cfg.stage, serde_json::json!({ "kept_spool": spool.path().display().to_string() }));
        return;
    }
    match assemble(cfg, &spool) {
        Ok(videos) => run
            .record_output(&cfg.stage, serde_json::json!({ "path": cfg.path.display().to_string(), "videos": videos })),
        Err(e) => run.fail(&cfg.stage, format!("{}: {e:#}", cfg.path.display())),
    }
}

/// Writes the HDF5 file from the spool, one video at a time so that memory
/// does not grow with the run, then removes the spool.
fn assemble(cfg: &WriterConfig, spool: &Spool) -> anyhow::Result<usize> {
    let (mut index, _) = locvtp_store::spool::read_index(spool.path())?;
    // Sorted by id; a video spooled twice (which a well-formed run never
    // does) keeps its first record rather than failing the whole file.
    index.sort_by(|a, b| a.video_id.cmp(&b.video_id));
    index.dedup_by(|later, first| later.video_id == first.video_id);
    let mut file = std::fs::File::open(spool.path())?;
    let records = index.iter().map(|r| locvtp_store::spool::read_record_at(&mut file, r.offset));
    locvtp_store::write_hdf5_from(&cfg.path, &cfg.dataset, &cfg.run, records)?;
    std::fs::remove_file(spool.path())?;
    Ok(index.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn feature(video: &str, index: u64) -> FeatureMsg {
        FeatureMsg::Feature { video: StdArc::from(video), index, values: vec![index as f32, 1.0] }
    }

    #[test]
    fn a_video_is_complete_only_with_every_clip_and_its_end() {
        let mut videos = VideosAt::new();
        for m in [feature("a", 1), feature("a", 0)] {
            gather(&mut videos, m);
        }
        gather(&mut videos, FeatureMsg::End { video: StdArc::from("a"), clips: 2, frames: 20, fps: 10.0 });
        gather(&mut videos, feature("b", 0));
        gather(&mut videos, FeatureMsg::End { video: StdArc::from("b"), clips: 2, frames: 20, fps: 10.0 });
        let a = complete("a", videos.remove("a").unwrap()).unwrap();
        assert_eq!(a.features, vec![0.0, 1.0, 1.0, 1.0]);
        let b = complete("b", videos.remove("b").unwrap()).unwrap_err();
        assert_eq!(b.reason, Reason::IncompleteFeatures { expected: 2, got: 1 });
    }
}
