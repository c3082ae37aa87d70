//! What travels between operators, and the typed per-item errors.

use locvtp_media::decode::{FrameChunk, VideoInfo};
use locvtp_narration::align::DropReason;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A video to process, named by its id (the file stem).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VideoItem {
    pub id: Arc<str>,
    pub path: PathBuf,
}

/// The step of the pipeline where an item failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorStage {
    /// Listing the input folder.
    List,
    /// Reading the narration of a video.
    Narration,
    /// Reading a video's metadata.
    Probe,
    /// Turning narration into caption clips.
    Align,
    Decode,
    /// Cutting clips out of the decoded frames.
    Clips,
    Write,
    Evaluate,
    /// Reading grounding annotations and joining them with features.
    Annotations,
}

impl fmt::Display for ErrorStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        f.write_str(&text)
    }
}

/// Why an item could not be used, with the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Two files in the folder have the same id; the first by name is used.
    #[error("duplicate video id: {} is ignored, {} is used", ignored.display(), used.display())]
    DuplicateId { used: PathBuf, ignored: PathBuf },
    /// A file in the folder that is not a usable video.
    #[error("{}: skipped: {why}", path.display())]
    NotAVideo { path: PathBuf, why: String },
    /// The file could not be opened, probed or decoded.
    #[error("{message}")]
    Unreadable { message: String },
    /// The narration of the video could not be read at all (the message
    /// names the file).
    #[error("{message}")]
    BadNarration { message: String },
    /// A cue, line or entry of a narration file was skipped (the message
    /// names file and line); the rest was read.
    #[error("{message}")]
    NarrationSkipped { message: String },
    /// The video has no narration, so it yields no training sample.
    #[error("no narration for this video")]
    NoNarration,
    /// Narration merged into a caption clip that cannot be used; the rest
    /// of the video is.
    #[error("caption clip {start_s:.2}-{end_s:.2}s dropped: {why:?}")]
    CaptionDropped { start_s: f64, end_s: f64, why: DropReason },
    /// A video shorter than one clip whose tail is dropped.
    #[error("no clip: {frames} frames are fewer than one clip and the tail is dropped")]
    NoClip { frames: u64 },
    /// Features arrived incomplete (a clip is missing).
    #[error("expected clips 0..{expected}, got {got} clips")]
    IncompleteFeatures { expected: u64, got: u64 },
    /// The finished video could not be stored.
    #[error("{message}")]
    Storage { message: String },
    /// A line or entry of a grounding annotation file was skipped (the
    /// message names file and line); the rest was read.
    #[error("{message}")]
    AnnotationSkipped { message: String },
    /// A grounding moment reaching outside its video was clamped to it and
    /// kept (the message names file, line and both moments).
    #[error("{message}")]
    MomentClamped { message: String },
    /// Grounding queries of a video that the feature file does not hold.
    #[error("{queries} {split} queries skipped: no features for this video in {}", file.display())]
    NoFeatures { split: String, queries: usize, file: PathBuf },
}

impl Reason {
    /// Whether the whole video is lost, as opposed to a part of it (one
    /// caption clip) that the run goes on without.
    pub fn loses_video(&self) -> bool {
        !matches!(
            self,
            Reason::CaptionDropped { .. }
                | Reason::NarrationSkipped { .. }
                | Reason::AnnotationSkipped { .. }
                | Reason::MomentClamped { .. }
                | Reason::NoFeatures { .. }
        )
    }

    /// `Unreadable` from an error chain, as one line.
    pub fn unreadable(e: &anyhow::Error) -> Reason {
        Reason::Unreadable { message: format!("{e:#}") }
    }
}

/// One item that could not be used: one line of the run's `errors.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    pub video_id: String,
    pub stage: ErrorStage,
    pub reason: Reason,
}

impl ItemError {
    pub fn new(video_id: impl Into<String>, stage: ErrorStage, reason: Reason) -> Self {
        ItemError { video_id: video_id.into(), stage, reason }
    }

    /// The line written to `errors.jsonl`: `video_id`, `stage`, `kind`, the
    /// reason as one readable sentence, and the reason's details.
    pub fn to_json_line(&self) -> serde_json::Value {
        let mut line = serde_json::to_value(&self.reason).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(map) = line.as_object_mut() {
            map.insert("video_id".into(), self.video_id.clone().into());
            map.insert("stage".into(), self.stage.to_string().into());
            map.insert("reason".into(), self.reason.to_string().into());
        }
        line
    }
}

impl ItemError {
    /// A grounding annotation that could not be read, for the video it
    /// names (`?` when the problem concerns the file or a line without one).
    pub fn annotation(e: &locvtp_narration::NarrationError) -> ItemError {
        let id = e.location().and_then(|l| l.video_id.clone()).unwrap_or_else(|| "?".into());
        ItemError::new(id, ErrorStage::Annotations, Reason::AnnotationSkipped { message: e.to_string() })
    }

    /// A warning of a grounding annotation reader worth a line in the log:
    /// clamped moments (and skipped items, when a reader folds them into
    /// its warnings). Other warnings (a detected encoding) are only logged.
    pub fn annotation_warning(w: &locvtp_narration::Warning) -> Option<ItemError> {
        use locvtp_narration::Warning;
        match w {
            Warning::Clamped { at, .. } => Some(ItemError::new(
                at.video_id.clone().unwrap_or_else(|| "?".into()),
                ErrorStage::Annotations,
                Reason::MomentClamped { message: w.to_string() },
            )),
            Warning::Skipped(e) => Some(ItemError::annotation(e)),
            other => {
                tracing::warn!("{other}");
                None
            }
        }
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} failed: {}", self.video_id, self.stage, self.reason)
    }
}

/// Output of the decode stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FrameMsg {
    Chunk {
        video: Arc<str>,
        chunk: FrameChunk,
    },
    /// The last chunk of the video has been sent.
    End {
        video: Arc<str>,
        frames: u64,
        info: VideoInfo,
    },
    Failed(ItemError),
}

/// Output of a clip sampler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClipMsg {
    /// `clip_frames` frames packed `[F, H, W, 3]`, u8.
    Clip {
        video: Arc<str>,
        index: u64,
        pixels: Vec<u8>,
    },
    End {
        video: Arc<str>,
        clips: u64,
        frames: u64,
        fps: f64,
    },
    Failed(ItemError),
}

/// Output of an encoder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FeatureMsg {
    Feature { video: Arc<str>, index: u64, values: Vec<f32> },
    End { video: Arc<str>, clips: u64, frames: u64, fps: f64 },
    Failed(ItemError),
}

/// A probed video. Times are fixed-point so that the value is totally
/// ordered (differential-dataflow needs `Ord`) and identical in every
/// process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VideoMeta {
    pub video: VideoItem,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Frame rate in millionths of a frame per second.
    pub fps_micro: u64,
    /// Frame count the container declares (0 when unknown).
    pub frames: u64,
}

impl VideoMeta {
    pub fn from_info(video: VideoItem, info: &VideoInfo) -> Self {
        VideoMeta {
            video,
            duration_us: (info.duration_s.max(0.0) * 1e6) as u64,
            fps_micro: (info.fps.max(0.0) * 1e6) as u64,
            frames: info.declared_frames,
        }
    }

    pub fn duration_s(&self) -> f64 {
        self.duration_us as f64 / 1e6
    }

    pub fn fps(&self) -> f64 {
        self.fps_micro as f64 / 1e6
    }
}

/// The narration of one video: its cues, JSON-encoded so that the value is
/// totally ordered for the join with the video's metadata.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Narration {
    pub video_id: String,
    pub cues_json: String,
}

impl Narration {
    pub fn new(cues: &locvtp_narration::VideoCues) -> Self {
        Narration {
            video_id: cues.video_id.clone(),
            cues_json: serde_json::to_string(&cues.cues).expect("cues are plain data"),
        }
    }

    pub fn cues(&self) -> Vec<locvtp_narration::Cue> {
        serde_json::from_str(&self.cues_json).expect("written by Narration::new")
    }
}

/// One caption clip of a video: a training sample's text and span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionSpan {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

/// The usable caption clips of one probed video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoCaptions {
    pub meta: VideoMeta,
    pub clips: Vec<CaptionSpan>,
}
