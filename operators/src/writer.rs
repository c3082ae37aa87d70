//! The feature writer: every worker routes its features to worker 0, which
//! completes a video when the frontier passes its timestamp and hands it to
//! its store: the crash-safe spool of the one HDF5 file of the run
//! (assembled when the input is exhausted), or a folder of `.npy` files.
//! Videos that cannot be written leave as typed errors on the operator's
//! output.

use crate::accumulate::PerTime;
use crate::messages::{ErrorStage, FeatureMsg, ItemError, Reason};
use crate::run::RunShared;
use crate::stats::RunStats;
use locvtp_store::{Layout, RunAttrs, Spool, SpoolRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// Where a writer puts complete videos: one implementation per output
/// format. Only worker 0 holds one; every video is routed there.
pub trait FeatureStore: Send + 'static {
    /// Stores one complete video durably, so that a run started again after
    /// a crash finds it and skips the video.
    fn store(&mut self, record: SpoolRecord) -> anyhow::Result<()>;

    /// The input is exhausted, or the run stopped early (see
    /// [`RunShared::cut_short`]): completes the output and records it for
    /// the summary under `stage`.
    fn finish(self: Box<Self>, stage: &str, run: &RunShared);
}

/// How a writer takes part in the run's counts.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The stage's name in the graph.
    pub stage: String,
    /// The writer counts written videos and clips in the run's counters and
    /// reports videos that failed upstream. When several sinks read one
    /// stream, only one of them does, so that the summary counts each video
    /// once; the others report only what fails in their own store.
    pub counts: bool,
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

/// Sinks the features into `store` (worker 0 only; the other workers pass
/// `None`). Returns the videos that could not be written.
pub fn write_features<'s>(
    features: Stream<'s, u64, Vec<FeatureMsg>>,
    cfg: WriterConfig,
    store: Option<Box<dyn FeatureStore>>,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<ItemError>> {
    let pact = Exchange::new(|_: &FeatureMsg| 0);
    features.unary_frontier(pact, "WriteFeatures", move |_cap, _info| {
        let mut open: PerTime<VideosAt> = PerTime::default();
        let mut store = store;
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
                    let record = match complete(&id, video) {
                        Ok(record) => record,
                        Err(e) => {
                            if cfg.counts {
                                RunStats::add(&run.stats.videos_failed, 1);
                                errors.push(e);
                            }
                            continue;
                        }
                    };
                    let clips = u64::from(record.num_clips);
                    let stored = match store.as_mut() {
                        Some(store) => store.store(record).map_err(|e| format!("{e:#}")),
                        None => Err("the writer's output is not open".to_string()),
                    };
                    match stored {
                        Ok(()) if cfg.counts => {
                            RunStats::add(&run.stats.videos_done, 1);
                            RunStats::add(&run.stats.clips_written, clips);
                        }
                        Ok(()) => {}
                        Err(message) => {
                            if cfg.counts {
                                RunStats::add(&run.stats.videos_failed, 1);
                            }
                            errors.push(ItemError::new(&id, ErrorStage::Write, Reason::Storage { message }));
                        }
                    }
                }
                output.session(&cap).give_iterator(errors.into_iter());
            }
            if frontier.is_empty() && !finished {
                finished = true;
                if let Some(store) = store.take() {
                    store.finish(&cfg.stage, &run);
                }
            }
        }
    })
}

/// The HDF5 file of a run: videos go to a crash-safe spool as they
/// complete, and the file is assembled from it once the input is done.
#[derive(Debug)]
pub struct Hdf5Store {
    pub path: PathBuf,
    pub layout: Layout,
    pub attrs: RunAttrs,
    pub spool: Spool,
}

impl FeatureStore for Hdf5Store {
    fn store(&mut self, record: SpoolRecord) -> anyhow::Result<()> {
        self.spool.append(&record)
    }

    /// Assembles the file, or keeps the spool for the next run when the
    /// run was stopped or failed.
    fn finish(self: Box<Self>, stage: &str, run: &RunShared) {
        if run.cut_short() || run.failed() {
            run.record_output(stage, serde_json::json!({ "kept_spool": self.spool.path().display().to_string() }));
            return;
        }
        match self.assemble() {
            Ok(videos) => run
                .record_output(stage, serde_json::json!({ "path": self.path.display().to_string(), "videos": videos })),
            Err(e) => run.fail(stage, format!("{}: {e:#}", self.path.display())),
        }
    }
}

impl Hdf5Store {
    /// Writes the HDF5 file from the spool, one video at a time so that
    /// memory does not grow with the run, then removes the spool.
    fn assemble(&self) -> anyhow::Result<usize> {
        let (mut index, _) = locvtp_store::spool::read_index(self.spool.path())?;
        // Sorted by id; a video spooled twice (which a well-formed run never
        // does) keeps its first record rather than failing the whole file.
        index.sort_by(|a, b| a.video_id.cmp(&b.video_id));
        index.dedup_by(|later, first| later.video_id == first.video_id);
        let mut file = std::fs::File::open(self.spool.path())?;
        let records = index.iter().map(|r| locvtp_store::spool::read_record_at(&mut file, r.offset));
        locvtp_store::write_hdf5_from(&self.path, &self.layout, &self.attrs, records)?;
        std::fs::remove_file(self.spool.path())?;
        Ok(index.len())
    }
}

/// A folder of `<video id>.npy` files, each written atomically as its video
/// completes: the folder itself is the record of finished videos.
#[derive(Debug)]
pub struct NpyStore {
    pub dir: PathBuf,
    /// Files written by this run.
    pub written: usize,
}

impl NpyStore {
    /// The file of video `id` in `dir`.
    pub fn file_of(dir: &std::path::Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.npy"))
    }
}

impl FeatureStore for NpyStore {
    fn store(&mut self, record: SpoolRecord) -> anyhow::Result<()> {
        let shape = [record.num_clips as usize, record.dim as usize];
        locvtp_store::npy::write_npy(&Self::file_of(&self.dir, &record.video_id), shape, &record.features)?;
        self.written += 1;
        Ok(())
    }

    fn finish(self: Box<Self>, stage: &str, run: &RunShared) {
        let mut output = serde_json::json!({ "dir": self.dir.display().to_string(), "written": self.written });
        match locvtp_store::npy::videos_in(&self.dir) {
            Ok(all) => output["videos"] = all.len().into(),
            Err(e) => tracing::warn!("{e:#}"),
        }
        run.record_output(stage, output);
    }
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
