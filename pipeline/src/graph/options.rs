//! Run options and the options struct of every stage type, with their
//! defaults, path resolution and range checks.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::paths::PathResolver;
use super::registry::{Checks, DataKind, Port, StageSpec};

/// The `[run]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Where the run writes its outputs; relative output paths of stages are
    /// relative to it.
    pub output_dir: PathBuf,
    /// Seed for every random choice of the run.
    #[serde(default)]
    pub seed: u64,
    /// Videos in flight per worker.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Seconds between progress log lines when not on a terminal.
    #[serde(default = "default_log_every_s")]
    pub log_every_s: f64,
}

fn default_max_in_flight() -> usize {
    8
}

fn default_log_every_s() -> f64 {
    10.0
}

impl RunOptions {
    pub(crate) fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("output_dir", &mut self.output_dir);
    }

    pub(crate) fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("max_in_flight", self.max_in_flight);
        checks.positive("log_every_s", self.log_every_s);
    }
}

/// Where a model runs: `auto` picks CUDA when available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    /// `cuda` (index `None`: the default device) or `cuda:N`.
    Cuda(Option<usize>),
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(None)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(|n| Device::Cuda(Some(n)))
                .ok_or_else(|| format!("expected auto, cpu, cuda or cuda:N, got `{other}`")),
        }
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// `video_files`: lists the videos of a folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoFilesOptions {
    /// Folder searched for videos.
    pub dir: PathBuf,
    /// File extensions that count as videos, without the dot.
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// A file of video ids, one a line, to restrict the listing to.
    #[serde(default)]
    pub list: Option<PathBuf>,
    /// At most this many videos (after `list`), for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_extensions() -> Vec<String> {
    ["mp4", "webm", "mkv", "mov", "avi"].map(String::from).to_vec()
}

impl StageSpec for VideoFilesOptions {
    const TYPE: &'static str = "video_files";
    const INPUTS: &'static [Port] = &[];
    const OUTPUT: Option<DataKind> = Some(DataKind::VideoFiles);

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("dir", &mut self.dir);
        paths.input_opt("list", &mut self.list);
    }

    fn validate(&self, checks: &mut Checks) {
        if self.extensions.is_empty() {
            checks.error("extensions", "must list at least one extension");
        }
        if let Some(bad) = self.extensions.iter().find(|e| e.is_empty() || e.starts_with('.')) {
            checks.error("extensions", format!("extensions are written without the dot, like \"mp4\"; got \"{bad}\""));
        }
        if let Some(limit) = self.limit {
            checks.at_least_one("limit", limit);
        }
    }
}

/// `decode`: decodes videos to frames with FFmpeg.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeOptions {
    /// Videos decoded at once per worker, each on its own thread.
    pub threads: usize,
    /// FFmpeg threads per video; 0 lets FFmpeg choose.
    pub codec_threads: usize,
    /// Frames are resized to `frame_size` x `frame_size`.
    pub frame_size: u32,
    /// Capacity of the bounded channel of frame chunks.
    pub queue: usize,
    /// Frames per chunk.
    pub chunk_frames: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { threads: 2, codec_threads: 1, frame_size: 112, queue: 32, chunk_frames: 16 }
    }
}

impl StageSpec for DecodeOptions {
    const TYPE: &'static str = "decode";
    const INPUTS: &'static [Port] = &[Port { name: "videos", kind: DataKind::VideoFiles }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Frames);

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("threads", self.threads);
        checks.at_least_one("frame_size", self.frame_size as usize);
        checks.at_least_one("queue", self.queue);
        checks.at_least_one("chunk_frames", self.chunk_frames);
    }
}

/// What `dense_clips` does with the frames left over at the end of a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tail {
    /// Repeat the last frame to fill a final clip.
    #[default]
    Pad,
    /// Drop the partial clip.
    Drop,
}

/// `dense_clips`: cuts frames into consecutive fixed-length clips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenseClipsOptions {
    pub clip_frames: usize,
    /// Frames between the starts of consecutive clips.
    pub stride: usize,
    pub tail: Tail,
}

impl Default for DenseClipsOptions {
    fn default() -> Self {
        DenseClipsOptions { clip_frames: 16, stride: 16, tail: Tail::Pad }
    }
}

impl StageSpec for DenseClipsOptions {
    const TYPE: &'static str = "dense_clips";
    const INPUTS: &'static [Port] = &[Port { name: "frames", kind: DataKind::Frames }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Clips);

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("clip_frames", self.clip_frames);
        checks.at_least_one("stride", self.stride);
    }
}

/// Which C3D layer `c3d_encode` emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The LocVTP projection head (the joint video-text space).
    #[default]
    Projection,
    /// The backbone's fc6 activations.
    Fc6,
}

/// `c3d_encode`: encodes clips with the C3D video encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C3dEncodeOptions {
    /// Model config (TOML).
    pub model: PathBuf,
    /// Weights; without them the model is randomly initialised from
    /// `run.seed`, which is only useful for testing the plumbing.
    pub checkpoint: Option<PathBuf>,
    pub layer: Layer,
    pub device: Device,
    /// Clips per forward pass.
    pub batch_size: usize,
    /// Batches in flight to the model thread.
    pub queue: usize,
    /// `auto` (bf16 autocast on CUDA, fp32 elsewhere), `fp32` or `bf16`.
    pub precision: locvtp_model::amp::Precision,
}

impl Default for C3dEncodeOptions {
    fn default() -> Self {
        C3dEncodeOptions {
            model: PathBuf::from("configs/c3d-full.toml"),
            checkpoint: None,
            layer: Layer::Projection,
            device: Device::Auto,
            batch_size: 8,
            queue: 4,
            precision: locvtp_model::amp::Precision::Auto,
        }
    }
}

impl StageSpec for C3dEncodeOptions {
    const TYPE: &'static str = "c3d_encode";
    const INPUTS: &'static [Port] = &[Port { name: "clips", kind: DataKind::Clips }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Features);

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("model", &mut self.model);
        paths.input_opt("checkpoint", &mut self.checkpoint);
    }

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("batch_size", self.batch_size);
        checks.at_least_one("queue", self.queue);
    }
}

/// `hdf5_writer`: writes features to one HDF5 file, a dataset per video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hdf5WriterOptions {
    /// Output file, relative to `run.output_dir`.
    pub path: PathBuf,
    /// Name of the dataset inside each video's group.
    pub dataset: String,
}

impl Default for Hdf5WriterOptions {
    fn default() -> Self {
        Hdf5WriterOptions { path: PathBuf::from("features.h5"), dataset: "c3d_features".to_string() }
    }
}

impl StageSpec for Hdf5WriterOptions {
    const TYPE: &'static str = "hdf5_writer";
    const INPUTS: &'static [Port] = &[Port { name: "features", kind: DataKind::Features }];
    const OUTPUT: Option<DataKind> = None;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.path);
    }

    fn validate(&self, checks: &mut Checks) {
        if self.path.as_os_str().is_empty() {
            checks.error("path", "must not be empty");
        }
        if self.dataset.is_empty() {
            checks.error("dataset", "must not be empty");
        }
    }
}

/// Format of narration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NarrationFormat {
    /// Chosen per file from its extension and contents.
    #[default]
    Auto,
    Webvtt,
    Srt,
    /// HowTo100M's `caption.json`: per video, `start`, `end`, `text` arrays.
    Howto100mJson,
    /// The released LocVTP caption list.
    LocvtpList,
}

/// `narration`: reads ASR narration, from a folder of per-video subtitle
/// files (`dir`) or one file covering many videos (`file`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NarrationOptions {
    pub dir: Option<PathBuf>,
    pub file: Option<PathBuf>,
    pub format: NarrationFormat,
}

impl StageSpec for NarrationOptions {
    const TYPE: &'static str = "narration";
    const INPUTS: &'static [Port] = &[];
    const OUTPUT: Option<DataKind> = Some(DataKind::Narration);

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input_opt("dir", &mut self.dir);
        paths.input_opt("file", &mut self.file);
    }

    fn validate(&self, checks: &mut Checks) {
        match (&self.dir, &self.file) {
            (Some(_), Some(_)) => {
                checks.error("file", "set either `dir` (a folder of subtitle files) or `file` (one file), not both")
            }
            (None, None) => checks.error("", "needs `dir` (a folder of subtitle files) or `file` (one file)"),
            _ => {}
        }
    }
}

/// `probe`: reads each video's duration, frame rate and size.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeOptions {}

impl StageSpec for ProbeOptions {
    const TYPE: &'static str = "probe";
    const INPUTS: &'static [Port] = &[Port { name: "videos", kind: DataKind::VideoFiles }];
    const OUTPUT: Option<DataKind> = Some(DataKind::VideoMeta);
}

/// `align`: merges narration cues into caption clips within each video's
/// duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignOptions {
    /// Shortest caption clip, in seconds.
    pub min_seconds: f64,
    /// Longest caption clip, in seconds.
    pub max_seconds: f64,
    /// Most words in one caption.
    pub max_words: usize,
    /// Caption clips shorter than this after clamping are dropped.
    pub min_clip_seconds: f64,
}

impl Default for AlignOptions {
    fn default() -> Self {
        AlignOptions { min_seconds: 4.0, max_seconds: 16.0, max_words: 32, min_clip_seconds: 1.0 }
    }
}

impl StageSpec for AlignOptions {
    const TYPE: &'static str = "align";
    const INPUTS: &'static [Port] =
        &[Port { name: "narration", kind: DataKind::Narration }, Port { name: "meta", kind: DataKind::VideoMeta }];
    const OUTPUT: Option<DataKind> = Some(DataKind::CaptionClips);

    fn validate(&self, checks: &mut Checks) {
        checks.positive("min_seconds", self.min_seconds);
        checks.positive("max_seconds", self.max_seconds);
        checks.non_negative("min_clip_seconds", self.min_clip_seconds);
        if self.max_seconds < self.min_seconds {
            checks.error(
                "max_seconds",
                format!("must be at least min_seconds ({}), got {}", self.min_seconds, self.max_seconds),
            );
        }
        checks.at_least_one("max_words", self.max_words);
    }
}

/// `segments`: samples segments of frames for each caption clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentsOptions {
    pub num_segments: usize,
    pub frames_per_segment: usize,
}

impl Default for SegmentsOptions {
    fn default() -> Self {
        SegmentsOptions { num_segments: 10, frames_per_segment: 16 }
    }
}

impl StageSpec for SegmentsOptions {
    const TYPE: &'static str = "segments";
    const INPUTS: &'static [Port] =
        &[Port { name: "frames", kind: DataKind::Frames }, Port { name: "captions", kind: DataKind::CaptionClips }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Samples);

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("num_segments", self.num_segments);
        checks.at_least_one("frames_per_segment", self.frames_per_segment);
    }
}

/// `train`: pre-trains LocVTP on samples, emitting losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Model config (TOML).
    pub model: PathBuf,
    /// Pretrained text encoder weights.
    #[serde(default)]
    pub text_encoder: Option<PathBuf>,
    #[serde(default)]
    pub device: Device,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Global batch size, split across workers.
    #[serde(default = "default_train_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Epochs after which the learning rate drops.
    #[serde(default = "default_milestones")]
    pub milestones: Vec<usize>,
    /// Temperature of the contrastive losses.
    #[serde(default = "one")]
    pub tau: f64,
    /// Weight of the context-warping (splice) loss.
    #[serde(default = "one")]
    pub w_splice: f64,
    /// Weight of the fine-grained loss.
    #[serde(default = "default_w_fg")]
    pub w_fg: f64,
    /// Also checkpoint every this many steps, besides every epoch.
    #[serde(default)]
    pub checkpoint_every_steps: Option<usize>,
    /// Continue from the latest checkpoint in the run's checkpoints folder.
    #[serde(default = "yes")]
    pub resume: bool,
    /// Weights to start from when not resuming.
    #[serde(default)]
    pub init_checkpoint: Option<PathBuf>,
    /// Parts each global batch is split into, each with its own in-batch
    /// negatives and random draws, spread over the workers. Default: one
    /// per worker. Fixing it makes runs on different numbers of workers
    /// take the same steps.
    #[serde(default)]
    pub micro_batches: Option<usize>,
    /// `auto` (bf16 autocast on CUDA, fp32 elsewhere), `fp32` or `bf16`.
    #[serde(default)]
    pub precision: locvtp_model::amp::Precision,
}

fn default_epochs() -> usize {
    50
}

fn default_train_batch_size() -> usize {
    128
}

fn default_lr() -> f64 {
    0.001
}

fn default_milestones() -> Vec<usize> {
    vec![20, 40]
}

fn one() -> f64 {
    1.0
}

fn default_w_fg() -> f64 {
    10.0
}

fn yes() -> bool {
    true
}

impl StageSpec for TrainOptions {
    const TYPE: &'static str = "train";
    const INPUTS: &'static [Port] = &[Port { name: "samples", kind: DataKind::Samples }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Losses);

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("model", &mut self.model);
        paths.input_opt("text_encoder", &mut self.text_encoder);
        paths.input_opt("init_checkpoint", &mut self.init_checkpoint);
    }

    fn validate(&self, checks: &mut Checks) {
        checks.at_least_one("epochs", self.epochs);
        checks.at_least_one("batch_size", self.batch_size);
        checks.positive("lr", self.lr);
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            checks.error("milestones", "must be strictly increasing");
        }
        checks.positive("tau", self.tau);
        checks.non_negative("w_splice", self.w_splice);
        checks.non_negative("w_fg", self.w_fg);
        if let Some(steps) = self.checkpoint_every_steps {
            checks.at_least_one("checkpoint_every_steps", steps);
        }
    }
}

/// `checkpoints`: saves the model after each epoch (and as `train` asks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointsOptions {
    /// Folder, relative to `run.output_dir`.
    pub dir: PathBuf,
}

impl Default for CheckpointsOptions {
    fn default() -> Self {
        CheckpointsOptions { dir: PathBuf::from("checkpoints") }
    }
}

impl StageSpec for CheckpointsOptions {
    const TYPE: &'static str = "checkpoints";
    const INPUTS: &'static [Port] = &[Port { name: "losses", kind: DataKind::Losses }];
    const OUTPUT: Option<DataKind> = None;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.dir);
    }
}

/// `metrics`: writes losses as JSON lines and plots the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsOptions {
    /// JSON-lines file, relative to `run.output_dir`.
    pub path: PathBuf,
    /// Loss-curve picture, relative to `run.output_dir`.
    pub plot: PathBuf,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions { path: PathBuf::from("metrics.jsonl"), plot: PathBuf::from("loss.png") }
    }
}

impl StageSpec for MetricsOptions {
    const TYPE: &'static str = "metrics";
    const INPUTS: &'static [Port] = &[Port { name: "losses", kind: DataKind::Losses }];
    const OUTPUT: Option<DataKind> = None;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.path);
        paths.output(&mut self.plot);
    }
}

/// Format of temporal grounding annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroundingFormat {
    /// `video_id start end##sentence` lines.
    #[default]
    CharadesSta,
    /// `{vid: {"duration", "timestamps", "sentences"}}`.
    Activitynet,
    /// 2D-TAN's `{vid: {"num_frames", "fps", "timestamps", "sentences"}}`.
    Tacos,
}

/// Options of the `evaluate` sink: text-to-video retrieval over caption
/// clips and zero-shot temporal grounding, both from the projected clip
/// features of its input and the projected sentences of the same checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateOptions {
    /// Hugging Face folder of the frozen text encoder; defaults to the
    /// packaged all-MiniLM-L6-v2.
    pub text_encoder: Option<PathBuf>,
    /// Folder of narration files (`<id>.vtt` / `.srt`) whose caption clips
    /// are the retrieval queries.
    pub narration: Option<PathBuf>,
    /// Merging of cues into retrieval caption clips.
    pub min_seconds: f64,
    pub max_seconds: f64,
    pub max_words: usize,
    /// Temporal grounding annotations.
    pub grounding: Option<PathBuf>,
    pub grounding_format: GroundingFormat,
    /// Longest candidate window, in clips.
    pub max_window_clips: usize,
    /// Results (JSON), relative to `run.output_dir`.
    pub output: PathBuf,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            text_encoder: None,
            narration: None,
            min_seconds: 1.0,
            max_seconds: 16.0,
            max_words: 32,
            grounding: None,
            grounding_format: GroundingFormat::CharadesSta,
            max_window_clips: 16,
            output: PathBuf::from("evaluation.json"),
        }
    }
}

impl StageSpec for EvaluateOptions {
    const TYPE: &'static str = "evaluate";
    const INPUTS: &'static [Port] = &[Port { name: "features", kind: DataKind::Features }];
    const OUTPUT: Option<DataKind> = None;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input_opt("text_encoder", &mut self.text_encoder);
        paths.input_opt("narration", &mut self.narration);
        paths.input_opt("grounding", &mut self.grounding);
        paths.output(&mut self.output);
    }

    fn validate(&self, checks: &mut Checks) {
        if self.narration.is_none() && self.grounding.is_none() {
            checks.error("narration", "set narration (retrieval), grounding, or both");
        }
        checks.at_least_one("max_window_clips", self.max_window_clips);
        checks.positive("min_seconds", self.min_seconds);
    }
}
