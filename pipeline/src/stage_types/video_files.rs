//! `video_files`: the videos of a folder, each emitted by the worker that
//! owns it (by a stable hash of its id), one timestamp per video, at most
//! `run.max_in_flight` ahead of the ends of its flow.
//!
//! A video is any file FFmpeg opens and finds a video stream in. Files with
//! one of `extensions` are listed without opening them (their problems,
//! such as an `.mp4` without a video stream, are per-item decode errors);
//! files with an extension of a known non-video kind (subtitles, text,
//! images, audio, partial downloads, ...) are passed over; any other file,
//! including one without an extension, is opened with FFmpeg during the
//! listing and listed when it holds a video stream. Every file passed over
//! is counted in `summary.json` under `skipped_files`, by reason.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use crate::graph::PathResolver;
use locvtp_media::decode::NotAVideo;
use locvtp_operators::source::paced_source;
use locvtp_operators::{worker_of, ErrorStage, ItemError, Reason, RunStats, VideoItem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use timely::dataflow::operators::ToStream;

/// Extensions listed by default: the containers FFmpeg reads that video
/// datasets come in (HowTo100M's mp4/webm, TGIF's gif, broadcast ts, ...).
pub const DEFAULT_EXTENSIONS: [&str; 16] =
    ["mp4", "webm", "mkv", "mov", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "wmv", "3gp", "ogv", "gif", "mts", "m2ts"];

/// Extensions of files that sit beside videos in datasets and are not
/// videos. Listing one in `extensions` lists such files anyway.
#[rustfmt::skip] // one line per kind of file
pub const NON_VIDEO_EXTENSIONS: &[&str] = &[
    // subtitles, annotations, text and data
    "vtt", "srt", "ass", "ssa", "sub", "sbv", "ttml", "dfxp", "lrc", "txt", "md", "rst", "log", "nfo", "json",
    "jsonl", "csv", "tsv", "xml", "html", "htm", "yaml", "yml", "toml", "ini", "cfg", "pdf", "doc", "docx",
    // features, models, code
    "h5", "hdf5", "npy", "npz", "pkl", "pickle", "pt", "pth", "ckpt", "safetensors", "bin", "lmdb", "mdb", "py",
    "sh", "rs",
    // still images (FFmpeg opens them as a video of one frame)
    "jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "heic", "heif", "svg", "ico", "psd", "raw", "dng", "ppm",
    "pgm", "exr",
    // audio
    "mp3", "wav", "flac", "aac", "m4a", "ogg", "oga", "opus", "wma", "aiff", "aif", "mka", "ac3", "amr", "mid",
    // archives and checksums
    "zip", "tar", "gz", "tgz", "bz2", "xz", "zst", "7z", "rar", "md5", "sha1", "sha256",
    // partial downloads (yt-dlp, browsers) and temporary files
    "part", "ytdl", "crdownload", "download", "partial", "tmp", "temp", "lock", "aria2",
];

/// Why a file of the folder is not one of the run's videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The name starts with a dot.
    HiddenFile,
    /// A folder, or anything else that is not a regular file.
    NotAFile,
    /// An extension of [`NON_VIDEO_EXTENSIONS`] not in `extensions`.
    NonVideoExtension,
    /// An extension not in `extensions`, with `probe_unknown` off.
    UnknownExtension,
    /// Probed: FFmpeg cannot open it as media.
    NotMedia,
    /// Probed: media without a video stream (audio, a cover picture).
    NoVideoStream,
    /// Its id is not in `list`.
    NotInList,
    /// Past `limit`.
    OverLimit,
}

impl SkipReason {
    /// The reason's name in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::HiddenFile => "hidden_file",
            SkipReason::NotAFile => "not_a_file",
            SkipReason::NonVideoExtension => "non_video_extension",
            SkipReason::UnknownExtension => "unknown_extension",
            SkipReason::NotMedia => "not_media",
            SkipReason::NoVideoStream => "no_video_stream",
            SkipReason::NotInList => "not_in_list",
            SkipReason::OverLimit => "over_limit",
        }
    }
}

/// Options of `video_files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VideoFiles {
    /// Folder searched for videos (not recursively).
    pub dir: PathBuf,
    /// File extensions listed as videos without opening them, without the
    /// dot (case-insensitive).
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// Open every other file with FFmpeg (except hidden files and
    /// extensions of known non-video kinds such as subtitles, images and
    /// audio) and list it when it holds a video stream.
    #[serde(default = "default_true")]
    pub probe_unknown: bool,
    /// A file of video ids, one a line, to restrict the listing to.
    #[serde(default)]
    pub list: Option<PathBuf>,
    /// At most this many videos (after `list`, by id), for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_extensions() -> Vec<String> {
    DEFAULT_EXTENSIONS.map(String::from).to_vec()
}

fn default_true() -> bool {
    true
}

impl VideoFiles {
    /// Every video of `dir`, with the default extensions.
    pub fn in_folder(dir: PathBuf) -> VideoFiles {
        VideoFiles { dir, extensions: default_extensions(), probe_unknown: true, list: None, limit: None }
    }
}

/// The listing as one process sees it.
#[derive(Debug, Default)]
pub struct Listing {
    /// The videos this process's workers emit, sorted by id.
    pub videos: Vec<VideoItem>,
    /// Every listed id, for stages that read per-video side files.
    pub ids: HashSet<Arc<str>>,
    /// Files that cannot be items, e.g. a second file with the same id.
    pub rejected: Vec<ItemError>,
    /// Files of the folder that are not videos of the run, by reason.
    pub skipped: BTreeMap<SkipReason, Vec<PathBuf>>,
    /// Videos that every sink downstream already holds from an earlier run
    /// of the same command, in the whole listing: the run skips them, and
    /// each sink's output must still hold them when it completes.
    pub finished: BTreeSet<String>,
}

/// What the listing of a folder found.
#[derive(Debug, Default)]
pub struct FolderListing {
    /// One video per id, sorted by id.
    pub videos: Vec<VideoItem>,
    /// Second and later files of one id.
    pub rejected: Vec<ItemError>,
    /// Every other file, by reason, in name order.
    pub skipped: BTreeMap<SkipReason, Vec<PathBuf>>,
}

/// Lists `opts.dir`: the videos among its files (see the module's
/// documentation), restricted to `list`, one per id (the first by name; the
/// others rejected), sorted by id.
pub fn list_videos(opts: &VideoFiles) -> anyhow::Result<FolderListing> {
    use anyhow::Context;
    let wanted: Option<HashSet<String>> = match &opts.list {
        None => None,
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{}: cannot read video list", path.display()))?;
            Some(
                text.lines()
                    .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect(),
            )
        }
    };
    let exts: HashSet<String> = opts.extensions.iter().map(|e| e.to_ascii_lowercase()).collect();
    let mut paths = Vec::new();
    let entries =
        std::fs::read_dir(&opts.dir).with_context(|| format!("{}: cannot read video folder", opts.dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot read video folder", opts.dir.display()))?;
        paths.push(entry.path());
    }
    paths.sort();
    let mut listing = FolderListing::default();
    let mut by_id: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in paths {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let listed = ext.as_ref().is_some_and(|e| exts.contains(e));
        let skip = if name.starts_with('.') {
            Some(SkipReason::HiddenFile)
        } else if !path.is_file() {
            Some(SkipReason::NotAFile)
        } else if !listed && ext.as_ref().is_some_and(|e| NON_VIDEO_EXTENSIONS.contains(&e.as_str())) {
            Some(SkipReason::NonVideoExtension)
        } else if !listed && !opts.probe_unknown {
            Some(SkipReason::UnknownExtension)
        } else if wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
            Some(SkipReason::NotInList)
        } else if listed {
            None
        } else {
            match locvtp_media::decode::check_video(&path) {
                Ok(()) => None,
                Err(NotAVideo::NotMedia(_)) => Some(SkipReason::NotMedia),
                Err(NotAVideo::NoVideoStream(_)) => Some(SkipReason::NoVideoStream),
            }
        };
        match skip {
            Some(reason) => listing.skipped.entry(reason).or_default().push(path),
            None => by_id.entry(id).or_default().push(path),
        }
    }
    for (id, mut paths) in by_id {
        for extra in &paths[1..] {
            listing.rejected.push(ItemError::new(
                &id,
                ErrorStage::List,
                Reason::DuplicateId { used: paths[0].clone(), ignored: extra.clone() },
            ));
        }
        listing.videos.push(VideoItem { id: Arc::from(id.as_str()), path: paths.swap_remove(0) });
    }
    if let Some(limit) = opts.limit.filter(|l| *l < listing.videos.len()) {
        let over = listing.videos.split_off(limit).into_iter().map(|v| v.path);
        listing.skipped.entry(SkipReason::OverLimit).or_default().extend(over);
    }
    Ok(listing)
}

/// Ids that every sink downstream of the source already holds, or none when
/// some sink needs every video (an evaluation, training).
fn finished_downstream(ctx: &PrepareContext<'_>) -> anyhow::Result<BTreeSet<String>> {
    let mut sinks = Vec::new();
    let mut queue = vec![ctx.stage.name.as_str()];
    let mut seen = HashSet::new();
    while let Some(name) = queue.pop() {
        for consumer in ctx.graph.consumers(name) {
            if seen.insert(consumer.name.as_str()) {
                if consumer.output().is_none() {
                    sinks.push(consumer);
                }
                queue.push(&consumer.name);
            }
        }
    }
    let mut common: Option<BTreeSet<String>> = None;
    for sink in sinks {
        let Some(done) = sink.options.finished_items()? else { return Ok(BTreeSet::new()) };
        common = Some(match common {
            None => done,
            Some(c) => c.intersection(&done).cloned().collect(),
        });
    }
    Ok(common.unwrap_or_default())
}

impl StageType for VideoFiles {
    const TYPE: &'static str = "video_files";
    const ABOUT: &'static str = "Lists the videos of a folder; each worker emits the videos it owns.";
    const INPUTS: &'static [Port] = &[];
    const OUTPUT: Option<DataKind> = Some(DataKind::VideoFiles);
    type Prepared = Listing;

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

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Listing> {
        if !self.dir.is_dir() {
            checks.error("dir", format!("{}: not a folder", self.dir.display()));
        }
        if let Some(list) = &self.list {
            if !list.is_file() {
                checks.error("list", format!("{}: no such file", list.display()));
            }
        }
        if !checks.is_empty() {
            return None;
        }
        if !ctx.running() {
            return Some(Listing::default());
        }
        let FolderListing { videos, rejected, skipped } = match list_videos(self) {
            Ok(l) => l,
            Err(e) => {
                checks.fail("dir", &e);
                return None;
            }
        };
        if !skipped.is_empty() && ctx.shape.process == 0 {
            let counts: Vec<String> =
                skipped.iter().map(|(r, files)| format!("{} {}", files.len(), r.name())).collect();
            tracing::info!("{}: files that are not videos of this run: {}", self.dir.display(), counts.join(", "));
        }
        let finished = match finished_downstream(ctx) {
            Ok(f) => f,
            Err(e) => {
                checks.fail("", &e);
                return None;
            }
        };
        let workers = ctx.shape.workers();
        let mine = ctx.shape.local_workers();
        let ids = videos.iter().map(|v| v.id.clone()).collect();
        // Only listed videos count: a sink's folder may hold others.
        let done: BTreeSet<String> =
            videos.iter().filter(|v| finished.contains(&*v.id)).map(|v| v.id.to_string()).collect();
        let videos: Vec<VideoItem> = videos
            .into_iter()
            .filter(|v| !finished.contains(&*v.id) && mine.contains(&worker_of(&v.id, workers)))
            .collect();
        if !done.is_empty() && ctx.shape.process == 0 {
            tracing::info!("resuming: {} videos finished by an earlier run are kept", done.len());
        }
        Some(Listing { videos, ids, rejected, skipped, finished: done })
    }

    fn build<'s>(
        &self,
        listing: Arc<Listing>,
        ctx: &mut BuildContext<'_, 's>,
        _inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let (index, peers) = (ctx.index(), ctx.peers());
        let mine: Vec<VideoItem> =
            listing.videos.iter().filter(|v| worker_of(&v.id, peers) == index).cloned().collect();
        RunStats::add(&ctx.run.stats.videos_total, mine.len() as u64);
        let rejected = if index == 0 {
            RunStats::add(&ctx.run.stats.videos_skipped, listing.finished.len() as u64);
            RunStats::add(&ctx.run.stats.videos_total, (listing.finished.len() + listing.rejected.len()) as u64);
            for (reason, files) in &listing.skipped {
                ctx.run.record_skipped_files(reason.name(), files);
            }
            listing.rejected.clone()
        } else {
            Vec::new()
        };
        ctx.report_errors(rejected.to_stream(ctx.scope));
        let window = ctx.graph.run.max_in_flight as u64;
        let stream = paced_source(ctx.scope, "VideoFiles", mine, window, ctx.flow(), ctx.run.clone());
        Ok(Some(VideoItem::wrap(stream)))
    }
}

/// A video id's file in `dir` with one of `extensions`, if any.
pub fn side_file(dir: &Path, id: &str, extensions: &[&str]) -> Option<PathBuf> {
    extensions.iter().map(|e| dir.join(format!("{id}.{e}"))).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::{list_videos, SkipReason, VideoFiles};
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_operators::VideoItem;
    use std::path::Path;

    fn synth_video(path: &Path) {
        use locvtp_media::synth::{Background, Colour, Motion, Scene, Shape, SynthSpec};
        let scene = Scene {
            start_s: 0.0,
            end_s: 0.2,
            shape: Shape::Square,
            colour: Colour::Blue,
            motion: Motion::Up,
            background: Background::Navy,
        };
        locvtp_media::synth::write_video(&SynthSpec::new(32, 32, (25, 1), 0.2, vec![scene]), path).unwrap();
    }

    fn names(paths: &[std::path::PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn other_files_are_probed_and_every_file_passed_over_has_a_reason() {
        let t = TestGraph::new();
        let dir = t.path("videos");
        std::fs::create_dir_all(dir.join("sub.mp4")).unwrap();
        // Listed by extension without being opened.
        std::fs::write(dir.join("a.mp4"), b"not opened at listing").unwrap();
        // Found by content.
        synth_video(&dir.join("b.video"));
        synth_video(&dir.join("c"));
        // Not videos.
        std::fs::write(dir.join("d.bad"), (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
        std::fs::write(dir.join("a.en.vtt"), b"WEBVTT\n").unwrap();
        synth_video(&dir.join("still.png"));
        std::fs::write(dir.join(".a.mp4.partial"), b"").unwrap();
        std::fs::write(dir.join("e.mp4.part"), b"").unwrap();

        let opts = VideoFiles::in_folder(dir.clone());
        let listing = list_videos(&opts).unwrap();
        let ids: Vec<&str> = listing.videos.iter().map(|v| &*v.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let skipped: Vec<(SkipReason, Vec<String>)> = listing.skipped.iter().map(|(r, p)| (*r, names(p))).collect();
        let expected = [
            (SkipReason::HiddenFile, vec![".a.mp4.partial"]),
            (SkipReason::NotAFile, vec!["sub.mp4"]),
            (SkipReason::NonVideoExtension, vec!["a.en.vtt", "e.mp4.part", "still.png"]),
            (SkipReason::NotMedia, vec!["d.bad"]),
        ];
        let expected: Vec<(SkipReason, Vec<String>)> =
            expected.into_iter().map(|(r, n)| (r, n.into_iter().map(String::from).collect())).collect();
        assert_eq!(skipped, expected);

        let off = list_videos(&VideoFiles { probe_unknown: false, ..opts.clone() }).unwrap();
        assert_eq!(off.videos.iter().map(|v| &*v.id).collect::<Vec<_>>(), ["a"]);
        assert_eq!(names(&off.skipped[&SkipReason::UnknownExtension]), ["b.video", "c", "d.bad"]);

        let list = t.path("list.txt");
        std::fs::write(&list, "c\nb\n").unwrap();
        let some = list_videos(&VideoFiles { list: Some(list), limit: Some(1), ..opts }).unwrap();
        assert_eq!(some.videos.iter().map(|v| &*v.id).collect::<Vec<_>>(), ["b"]);
        assert_eq!(names(&some.skipped[&SkipReason::NotInList]), ["a.mp4", "d.bad"], "d.bad is not even opened");
        assert_eq!(names(&some.skipped[&SkipReason::OverLimit]), ["c"]);
    }

    #[test]
    fn lists_the_folder_by_id_and_rejects_a_second_file_of_one_id() {
        let t = TestGraph::new();
        let dir = t.dir.path().join("videos");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["b.mp4", "a.webm", "a.mkv", "notes.txt", "c.GIF"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let graph = t.graph(&format!(
            "[stages.videos]\ntype = \"video_files\"\ndir = \"{}\"\n\n[stages.write]\ntype = \"hdf5_writer\"\ninputs = [\"enc\"]\n",
            dir.display()
        ));
        let out = run_stage::<VideoItem>(&graph, "videos", |_| Vec::new());
        let ids: Vec<(u64, String)> = out.items.iter().map(|(t, v)| (*t, v.id.to_string())).collect();
        assert_eq!(ids, [(0, "a".to_string()), (1, "b".to_string()), (2, "c".to_string())]);
        assert_eq!(out.items[0].1.path.file_name().unwrap(), "a.mkv", "the first file by name is used");
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].video_id, "a");
    }
}
