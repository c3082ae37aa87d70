//! `video_files`: the videos of a folder, each emitted by the worker that
//! owns it (by a stable hash of its id), one timestamp per video, at most
//! `run.max_in_flight` ahead of the ends of its flow.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use crate::graph::PathResolver;
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

/// Options of `video_files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VideoFiles {
    /// Folder searched for videos (not recursively).
    pub dir: PathBuf,
    /// File extensions that count as videos, without the dot
    /// (case-insensitive).
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
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

impl VideoFiles {
    /// Every video of `dir`, with the default extensions.
    pub fn in_folder(dir: PathBuf) -> VideoFiles {
        VideoFiles { dir, extensions: default_extensions(), list: None, limit: None }
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
    /// Videos that every sink downstream already holds from an earlier run
    /// of the same command, in the whole listing.
    pub finished: usize,
}

/// Lists `opts.dir`: files with the extensions, restricted to `list`, one
/// per id (the first by name; the others rejected), sorted by id.
pub fn list_videos(opts: &VideoFiles) -> anyhow::Result<(Vec<VideoItem>, Vec<ItemError>)> {
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
    let mut by_id: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let entries =
        std::fs::read_dir(&opts.dir).with_context(|| format!("{}: cannot read video folder", opts.dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if !path.is_file() || !exts.contains(&ext) {
            continue;
        }
        let Some(id) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
        if id.starts_with('.') || wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
            continue;
        }
        by_id.entry(id).or_default().push(path);
    }
    let mut videos = Vec::new();
    let mut rejected = Vec::new();
    for (id, mut paths) in by_id {
        paths.sort();
        for extra in &paths[1..] {
            rejected.push(ItemError::new(
                &id,
                ErrorStage::List,
                Reason::DuplicateId { used: paths[0].clone(), ignored: extra.clone() },
            ));
        }
        videos.push(VideoItem { id: Arc::from(id.as_str()), path: paths.swap_remove(0) });
    }
    if let Some(limit) = opts.limit {
        videos.truncate(limit);
    }
    Ok((videos, rejected))
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
        let (videos, rejected) = match list_videos(self) {
            Ok(l) => l,
            Err(e) => {
                checks.fail("dir", &e);
                return None;
            }
        };
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
        let total = videos.len();
        let videos: Vec<VideoItem> = videos
            .into_iter()
            .filter(|v| !finished.contains(&*v.id) && mine.contains(&worker_of(&v.id, workers)))
            .collect();
        let skipped = finished.len().min(total);
        if skipped > 0 && ctx.shape.process == 0 {
            tracing::info!("resuming: {skipped} videos finished by an earlier run are kept");
        }
        Some(Listing { videos, ids, rejected, finished: skipped })
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
            RunStats::add(&ctx.run.stats.videos_skipped, listing.finished as u64);
            RunStats::add(&ctx.run.stats.videos_total, (listing.finished + listing.rejected.len()) as u64);
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
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_operators::VideoItem;

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
