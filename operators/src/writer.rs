//! The feature writer: every worker routes its features to worker 0, which
//! completes a video when the frontier passes its timestamp, appends it to
//! the crash-safe spool, and assembles the one HDF5 file of the run when
//! the input is exhausted.

use crate::messages::{FeatureMsg, ItemError};
use crate::stats::RunStats;
use locvtp_store::{RunAttrs, Spool, SpoolRecord};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub path: PathBuf,
    pub dataset: String,
    pub run: RunAttrs,
    pub errors_path: PathBuf,
    /// Set when the run is interrupted. If it is set when the input ends,
    /// the finished videos stay in the spool for the next run of the same
    /// command and no HDF5 file is assembled.
    pub interrupted: Arc<AtomicBool>,
}

/// What the writer did, read by the driver after the dataflow completes.
#[derive(Debug, Default)]
pub struct WriterReport {
    pub written: Option<PathBuf>,
    pub videos_in_file: usize,
    pub error: Option<String>,
    /// The run was interrupted: finished videos are kept in this spool.
    pub kept_spool: Option<PathBuf>,
}

#[derive(Default)]
struct VideoAcc {
    features: BTreeMap<u64, Vec<f32>>,
    end: Option<(Arc<str>, u64, u64, f64)>,
    failed: Option<ItemError>,
}

/// Appends one JSON line per failed item and flushes it, so the file can
/// always be parsed up to its last complete line.
pub struct ErrorLog {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl ErrorLog {
    pub fn new(path: PathBuf) -> Self {
        ErrorLog { file: None, path }
    }

    pub fn record(&mut self, e: &ItemError) {
        tracing::warn!("{}: {} failed: {}", e.video_id, e.stage, e.reason);
        if self.file.is_none() {
            self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).ok();
        }
        if let Some(f) = &mut self.file {
            let mut line = serde_json::to_vec(e).unwrap_or_default();
            line.push(b'\n');
            let _ = f.write_all(&line);
            let _ = f.sync_data();
        }
    }
}

/// Sinks the features. `spool` holds the records of an earlier, interrupted
/// run of the same command; they are kept and end up in the file too.
pub fn write_features<'s>(
    features: Stream<'s, u64, Vec<FeatureMsg>>,
    cfg: WriterConfig,
    spool: Option<Spool>,
    stats: Arc<RunStats>,
    report: Rc<RefCell<WriterReport>>,
) {
    let pact = Exchange::new(|_: &FeatureMsg| 0);
    features.sink(pact, "WriteFeatures", {
        let mut acc: BTreeMap<u64, VideoAcc> = BTreeMap::new();
        let mut spool = spool;
        let mut errors = ErrorLog::new(cfg.errors_path.clone());
        let mut finished = false;
        move |(input, frontier)| {
            input.for_each(|cap, data| {
                let t = *cap.least().expect("extraction times are totally ordered");
                let entry = acc.entry(t).or_default();
                for msg in data.drain(..) {
                    match msg {
                        FeatureMsg::Feature { index, values, .. } => {
                            entry.features.insert(index, values);
                        }
                        FeatureMsg::End { video, clips, frames, fps } => entry.end = Some((video, clips, frames, fps)),
                        FeatureMsg::Failed(e) => entry.failed = Some(e),
                    }
                }
            });
            let complete: Vec<u64> = acc.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
            for t in complete {
                let video = acc.remove(&t).expect("key listed above");
                let spool = spool.as_mut().expect("only worker 0 receives features");
                finish_video(video, spool, &mut errors, &stats);
            }
            if frontier.is_empty() && !finished {
                finished = true;
                if let Some(spool) = spool.take() {
                    let mut r = report.borrow_mut();
                    if cfg.interrupted.load(Ordering::SeqCst) {
                        r.kept_spool = Some(spool.path().to_path_buf());
                        return;
                    }
                    match assemble(&cfg, &spool) {
                        Ok(n) => {
                            r.written = Some(cfg.path.clone());
                            r.videos_in_file = n;
                        }
                        Err(e) => r.error = Some(format!("{e:#}")),
                    }
                }
            }
        }
    });
}

fn finish_video(video: VideoAcc, spool: &mut Spool, errors: &mut ErrorLog, stats: &RunStats) {
    if let Some(e) = video.failed {
        errors.record(&e);
        RunStats::add(&stats.videos_failed, 1);
        return;
    }
    let Some((id, clips, frames, fps)) = video.end else {
        // Features without an end marker cannot happen in a well-formed
        // graph; keep the run going and say which video it was.
        let e = ItemError {
            video_id: "?".into(),
            stage: "write".into(),
            reason: "features without an end of video".into(),
        };
        errors.record(&e);
        RunStats::add(&stats.videos_failed, 1);
        return;
    };
    let fail = |errors: &mut ErrorLog, reason: String| {
        errors.record(&ItemError { video_id: id.to_string(), stage: "write".into(), reason });
        RunStats::add(&stats.videos_failed, 1);
    };
    if video.features.len() as u64 != clips || video.features.keys().copied().ne(0..clips) {
        return fail(errors, format!("expected clips 0..{clips}, got {} clips", video.features.len()));
    }
    if clips == 0 {
        return fail(errors, format!("no clip: {frames} frames are fewer than one clip and the tail is dropped"));
    }
    let dim = video.features.values().next().map(Vec::len).unwrap_or(0);
    let record = SpoolRecord {
        video_id: id.to_string(),
        num_clips: clips as u32,
        dim: dim as u32,
        fps,
        frames,
        features: video.features.into_values().flatten().collect(),
    };
    if let Err(e) = spool.append(&record) {
        return fail(errors, format!("{e:#}"));
    }
    RunStats::add(&stats.videos_done, 1);
    RunStats::add(&stats.clips_written, clips);
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
