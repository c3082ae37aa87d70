//! What travels between operators.

use locvtp_media::decode::{FrameChunk, VideoInfo};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// A video to process, named by its id (the file stem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoItem {
    pub id: Arc<str>,
    pub path: PathBuf,
}

/// Why an item could not be used; one line of the run's errors file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    pub video_id: String,
    pub stage: String,
    pub reason: String,
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
