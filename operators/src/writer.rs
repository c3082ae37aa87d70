//! The feature writer: every worker routes its features to worker 0, which
//! completes a video when the frontier passes its timestamp and hands it to
//! its store: the crash-safe spool of the one HDF5 file of the run
//! (assembled when the input is exhausted), or a folder of `.npy` files.
//! Videos that cannot be written leave as typed errors on the operator's
//! output.
//!
//! Before a run can report success, each store checks that its output
//! holds every video the run reports: those it stored, and those it
//! skipped because an earlier run finished them. A video missing from the
//! output fails the run, naming it.

use crate::accumulate::PerTime;
use crate::messages::{ErrorStage, FeatureMsg, ItemError, Reason};
use crate::run::{PendingOutput, RunShared};
use crate::stats::RunStats;
use locvtp_store::{Layout, RunAttrs, Spool, SpoolRecord};
use std::collections::{BTreeMap, BTreeSet};
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

/// The videos an output must hold when a run completes: those its store
/// wrote in this run, and those the run skipped because an earlier run
/// finished them (which every sink holds, or they would not be skipped).
#[derive(Debug, Default)]
pub struct Reported {
    /// Skipped: finished by an earlier run.
    pub skipped: BTreeSet<String>,
    /// Stored by this run.
    pub stored: BTreeSet<String>,
}

impl Reported {
    /// Every video the output must hold.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.skipped.iter().chain(&self.stored)
    }

    /// How many distinct videos that is.
    pub fn count(&self) -> usize {
        self.skipped.union(&self.stored).count()
    }

    /// Fails naming the videos of [`Reported::all`] that `missing` (the
    /// output's check) found absent from `output`.
    fn check(&self, output: &std::path::Path, missing: Vec<String>) -> anyhow::Result<()> {
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::bail!("{}", locvtp_store::missing_message(output, &missing, self.count()))
    }
}

/// The HDF5 file of a run: videos go to a crash-safe spool as they
/// complete; once the input is done the file is assembled from the spool
/// under a temporary name and checked, and it replaces the final path (and
/// the spool goes) only when the whole run has succeeded.
#[derive(Debug)]
pub struct Hdf5Store {
    pub path: PathBuf,
    pub layout: Layout,
    pub attrs: RunAttrs,
    pub spool: Spool,
    pub reported: Reported,
}

impl FeatureStore for Hdf5Store {
    fn store(&mut self, record: SpoolRecord) -> anyhow::Result<()> {
        let id = record.video_id.clone();
        self.spool.append(&record)?;
        self.reported.stored.insert(id);
        Ok(())
    }

    /// Assembles and checks the file, leaving it for the run to put in
    /// place, or keeps the spool for the next run when the run was stopped
    /// or failed.
    fn finish(self: Box<Self>, stage: &str, run: &RunShared) {
        let kept = serde_json::json!({ "kept_spool": self.spool.path().display().to_string() });
        if run.cut_short() || run.failed() {
            run.record_output(stage, kept);
            return;
        }
        match self.assemble() {
            Ok((file, videos)) => {
                let spool = self.spool.path().to_path_buf();
                run.defer_output(PendingOutput {
                    stage: stage.to_string(),
                    committed: serde_json::json!({ "path": self.path.display().to_string(), "videos": videos }),
                    kept,
                    commit: Box::new(move || {
                        file.commit()?;
                        // Kept, the spool would only make the next run skip
                        // every video and assemble the same file again.
                        if let Err(e) = std::fs::remove_file(&spool) {
                            tracing::warn!("{}: cannot remove: {e}", spool.display());
                        }
                        Ok(())
                    }),
                });
            }
            Err(e) => {
                run.record_output(stage, kept);
                run.fail(stage, format!("{}: {e:#}", self.path.display()));
            }
        }
    }
}

impl Hdf5Store {
    /// Writes the HDF5 file from the spool under its temporary name, one
    /// video at a time so that memory does not grow with the run, and
    /// checks that it holds every reported video.
    fn assemble(&self) -> anyhow::Result<(locvtp_store::PendingFile, usize)> {
        let (mut index, _) = locvtp_store::spool::read_index(self.spool.path())?;
        // The file's attributes are true of every video in it: a record that
        // another run wrote (prepare refuses such spools, so only a spool
        // changed under this run has one) fails the file.
        let foreign = locvtp_store::spool::foreign_records(&index, &self.attrs.fingerprint());
        if !foreign.is_empty() {
            anyhow::bail!(
                "{}: {} videos were spooled with other settings than this run's, whose fingerprint the file \
                 would record: {}",
                self.spool.path().display(),
                foreign.len(),
                foreign.join(", ")
            );
        }
        // Sorted by id; a video spooled twice (which a well-formed run never
        // does) keeps its first record rather than failing the whole file.
        index.sort_by(|a, b| a.video_id.cmp(&b.video_id));
        index.dedup_by(|later, first| later.video_id == first.video_id);
        let mut file = std::fs::File::open(self.spool.path())?;
        let records = index.iter().map(|r| locvtp_store::spool::read_record_at(&mut file, r.offset));
        let pending = locvtp_store::write_hdf5_pending(&self.path, &self.layout, &self.attrs, records)?;
        let missing = locvtp_store::missing_videos(pending.temp_path(), &self.layout, self.reported.all())?;
        self.reported.check(&self.path, missing)?;
        Ok((pending, index.len()))
    }
}

/// A folder of `<video id>.npy` files, each written atomically as its video
/// completes: the folder itself is the record of finished videos.
#[derive(Debug)]
pub struct NpyStore {
    pub dir: PathBuf,
    pub reported: Reported,
}

impl NpyStore {
    /// The store of folder `dir`; `skipped` are the videos the run skips
    /// because an earlier run finished them.
    pub fn new(dir: PathBuf, skipped: BTreeSet<String>) -> NpyStore {
        NpyStore { dir, reported: Reported { skipped, stored: BTreeSet::new() } }
    }

    /// The file of video `id` in `dir`.
    pub fn file_of(dir: &std::path::Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.npy"))
    }
}

impl FeatureStore for NpyStore {
    fn store(&mut self, record: SpoolRecord) -> anyhow::Result<()> {
        let shape = [record.num_clips as usize, record.dim as usize];
        locvtp_store::npy::write_npy(&Self::file_of(&self.dir, &record.video_id), shape, &record.features)?;
        self.reported.stored.insert(record.video_id);
        Ok(())
    }

    /// Checks the folder once the input is done (the files themselves are
    /// in place as their videos finish).
    fn finish(self: Box<Self>, stage: &str, run: &RunShared) {
        let mut output =
            serde_json::json!({ "dir": self.dir.display().to_string(), "written": self.reported.stored.len() });
        match locvtp_store::npy::videos_in(&self.dir) {
            Ok(all) => output["videos"] = all.len().into(),
            Err(e) => tracing::warn!("{e:#}"),
        }
        run.record_output(stage, output);
        if run.cut_short() || run.failed() {
            return;
        }
        let checked = locvtp_store::npy::missing_videos(&self.dir, self.reported.all())
            .and_then(|missing| self.reported.check(&self.dir, missing));
        if let Err(e) = checked {
            run.fail(stage, format!("{e:#}"));
        }
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

    fn record(id: &str) -> SpoolRecord {
        SpoolRecord { video_id: id.into(), num_clips: 1, dim: 2, fps: 10.0, frames: 16, features: vec![1.0, 2.0] }
    }

    #[test]
    fn a_folder_that_lacks_a_reported_video_fails_the_run_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let skipped = ["a", "b"].map(String::from).into_iter().collect();
        locvtp_store::npy::write_npy(&dir.path().join("a.npy"), [1, 2], &[0.0, 0.0]).unwrap();
        let mut store = Box::new(NpyStore::new(dir.path().to_path_buf(), skipped));
        store.store(record("c")).unwrap();
        let run = RunShared::default();
        store.finish("write", &run);
        let fatal = run.fatal().expect("b is reported skipped but has no file");
        assert_eq!(fatal.stage, "write");
        assert!(fatal.message.ends_with("lacks 1 of the 3 videos this run reports processed or skipped: b"), "{fatal}");

        let mut store = Box::new(NpyStore::new(dir.path().to_path_buf(), BTreeSet::from(["a".to_string()])));
        store.store(record("d")).unwrap();
        let run = RunShared::default();
        store.finish("write", &run);
        assert!(run.fatal().is_none(), "{:?}", run.fatal());
        assert_eq!(run.outputs()["write"]["written"], 1);
    }

    #[test]
    fn a_file_is_assembled_only_from_records_of_this_runs_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.h5");
        let spool_at = locvtp_store::spool_path(&path);
        let ours = RunAttrs { checkpoint: "random-init:0".into(), ..RunAttrs::default() };
        let theirs = RunAttrs { checkpoint: "random-init:1".into(), ..ours.clone() };
        let store = || {
            let (spool, _) = Spool::open_index(&spool_at, &ours).unwrap();
            let (layout, reported) = (Layout::from("c3d_features"), Reported::default());
            Box::new(Hdf5Store { path: path.clone(), layout, attrs: ours.clone(), spool, reported })
        };
        let mut first = store();
        first.store(record("a")).unwrap();
        // Another run's record, appended to this spool behind its back.
        let (mut other, _) = Spool::open_index(&spool_at, &theirs).unwrap();
        other.append(&record("b")).unwrap();
        let run = RunShared::default();
        first.finish("write", &run);
        let fatal = run.fatal().expect("b carries another fingerprint");
        assert!(
            fatal.message.contains("1 videos were spooled with other settings") && fatal.message.ends_with(": b"),
            "{fatal}"
        );
        assert!(!path.exists() && run.settle_outputs(false).is_none());

        std::fs::remove_file(&spool_at).unwrap();
        let mut second = store();
        second.store(record("a")).unwrap();
        let run = RunShared::default();
        second.finish("write", &run);
        assert_eq!(run.fatal(), None);
        assert_eq!(run.settle_outputs(true), None);
        assert_eq!(locvtp_store::read_attrs(&path).unwrap(), ours);
        assert!(!spool_at.exists());
    }
}
