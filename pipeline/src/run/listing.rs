//! The run's list of videos: files of the configured extensions in a folder
//! (optionally restricted to the ids of a list file), sorted by id so that
//! every process of a cluster derives the same list and timestamps.

use crate::graph::VideoFilesOptions;
use anyhow::{Context, Result};
use locvtp_operators::{ItemError, VideoItem};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub struct Listing {
    pub videos: Vec<VideoItem>,
    /// Files that cannot be items, e.g. a second file with the same id.
    pub rejected: Vec<ItemError>,
}

pub fn list_videos(opts: &VideoFilesOptions) -> Result<Listing> {
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
    let mut by_id: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
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
            rejected.push(ItemError {
                video_id: id.clone(),
                stage: "list".into(),
                reason: format!("duplicate video id: {} is ignored, {} is used", extra.display(), paths[0].display()),
            });
        }
        videos.push(VideoItem { id: Arc::from(id.as_str()), path: paths.swap_remove(0) });
    }
    if let Some(limit) = opts.limit {
        videos.truncate(limit);
    }
    Ok(Listing { videos, rejected })
}
