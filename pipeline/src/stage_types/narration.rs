//! `narration`: the ASR narration of each listed video, from a folder of
//! per-video subtitle files (`<id>.vtt`, `<id>.srt`) or from one file
//! covering many videos (HowTo100M's `caption.json`, the released LocVTP
//! caption list). A one-file narration is read as a stream once per
//! process, keeping only the cues of that process's listed videos.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use crate::graph::PathResolver;
use crate::stage_types::video_files::VideoFiles;
use locvtp_narration::{Cue, NarrationError, NarrationFormat, VideoCues, Warning};
use locvtp_operators::{ErrorStage, ItemError, Narration, Reason, VideoItem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{OkErr, ToStream};

/// Options of `narration`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct NarrationReader {
    /// A folder of per-video subtitle files, `<video id>[.lang].vtt|srt`.
    pub dir: Option<PathBuf>,
    /// One narration file for many videos.
    pub file: Option<PathBuf>,
    /// Format of the narration (`auto`: by extension).
    pub format: NarrationFormat,
}

/// Where each listed video's narration comes from.
#[derive(Debug, Default)]
pub struct NarrationSource {
    /// From a one-file narration: the cues of this process's listed
    /// videos, each taken once.
    cues: Mutex<HashMap<String, Vec<Cue>>>,
    /// From a folder: each listed video's subtitle file.
    files: HashMap<String, PathBuf>,
    /// Problems of the file as a whole or of entries, reported once.
    file_errors: Vec<ItemError>,
}

fn is_json(file: &Path, format: NarrationFormat) -> bool {
    match format {
        NarrationFormat::Howto100mJson => true,
        NarrationFormat::Auto => file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")),
        _ => false,
    }
}

/// The error of a narration problem, for the video it names (`?` when it
/// concerns the file as a whole). Only listed videos matter.
fn narration_error(e: &NarrationError, listed: &HashSet<std::sync::Arc<str>>) -> Option<ItemError> {
    let id = e.location().and_then(|l| l.video_id.clone());
    match id {
        Some(id) if !listed.contains(id.as_str()) => None,
        Some(id) => {
            Some(ItemError::new(id, ErrorStage::Narration, Reason::NarrationSkipped { message: e.to_string() }))
        }
        None => Some(ItemError::new("?", ErrorStage::Narration, Reason::NarrationSkipped { message: e.to_string() })),
    }
}

/// Reads a one-file narration, keeping the cues of `keep`.
fn read_one_file(
    file: &Path,
    format: NarrationFormat,
    keep: &HashSet<&str>,
    listed: &HashSet<std::sync::Arc<str>>,
) -> Result<NarrationSource, Box<NarrationError>> {
    let mut source = NarrationSource::default();
    let mut cues = HashMap::new();
    if is_json(file, format) {
        locvtp_narration::howto100m::read_file(file, |r| {
            match r {
                Ok(v) if keep.contains(v.video_id.as_str()) => {
                    cues.insert(v.video_id, v.cues);
                }
                Ok(_) => {}
                Err(e) => source.file_errors.extend(narration_error(&e, listed)),
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(Box::new)?;
    } else {
        let parsed = locvtp_narration::annotation_list::read_file(file).map_err(Box::new)?;
        let mut by_video: BTreeMap<String, Vec<Cue>> = BTreeMap::new();
        for c in parsed.items.into_iter().filter(|c| keep.contains(c.video_id.as_str())) {
            by_video.entry(c.video_id.clone()).or_default().push(Cue {
                start: c.start_s,
                end: c.end_s,
                text: c.caption,
                words: Vec::new(),
            });
        }
        source.file_errors.extend(parsed.errors.iter().filter_map(|e| narration_error(e, listed)));
        cues.extend(by_video);
    }
    source.cues = Mutex::new(cues);
    Ok(source)
}

/// Each listed video's subtitle file in `dir`; the first by name when a
/// video has several.
fn subtitle_files(
    dir: &Path,
    format: NarrationFormat,
    keep: &HashSet<&str>,
) -> std::io::Result<HashMap<String, PathBuf>> {
    let wanted: &[&str] = match format {
        NarrationFormat::Webvtt => &["vtt"],
        NarrationFormat::Srt => &["srt"],
        _ => &["vtt", "srt"],
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| wanted.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    let mut files = HashMap::new();
    for path in paths {
        if let Some(id) = locvtp_narration::video_id_from_path(&path) {
            if keep.contains(id.as_str()) {
                files.entry(id).or_insert(path);
            }
        }
    }
    Ok(files)
}

/// The narration of one video, or why there is none; skipped cues go to
/// `errors`.
fn narration_of(
    video: &VideoItem,
    source: &NarrationSource,
    errors: &mut Vec<ItemError>,
) -> Result<Narration, ItemError> {
    let id = &*video.id;
    let fail = |reason| ItemError::new(id, ErrorStage::Narration, reason);
    if let Some(path) = source.files.get(id) {
        let (cues, warnings) = locvtp_narration::read_subtitle_file(path)
            .map_err(|e| fail(Reason::BadNarration { message: e.to_string() }))?;
        for w in warnings {
            match w {
                Warning::Skipped(e) => errors.push(fail(Reason::NarrationSkipped { message: e.to_string() })),
                other => tracing::debug!("{other}"),
            }
        }
        return Ok(Narration::new(&VideoCues { video_id: id.to_string(), cues }));
    }
    let cues = source.cues.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    match cues {
        Some(cues) => Ok(Narration::new(&VideoCues { video_id: id.to_string(), cues })),
        None => Err(fail(Reason::NoNarration)),
    }
}

impl StageType for NarrationReader {
    const TYPE: &'static str = "narration";
    const ABOUT: &'static str =
        "Reads each listed video's ASR narration from a folder of subtitles or one caption file.";
    const INPUTS: &'static [Port] = &[Port { name: "videos", kind: DataKind::VideoFiles }];
    const OUTPUT: Option<DataKind> = Some(DataKind::Narration);
    type Prepared = NarrationSource;

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
            (None, Some(_)) if matches!(self.format, NarrationFormat::Webvtt | NarrationFormat::Srt) => {
                checks.error("format", "WebVTT and SRT narration is one file per video: give the folder with `dir`")
            }
            (Some(_), None) if matches!(self.format, NarrationFormat::Howto100mJson | NarrationFormat::LocvtpList) => {
                checks.error("format", "this format is one file for many videos: give it with `file`")
            }
            _ => {}
        }
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<NarrationSource> {
        if let Some(dir) = &self.dir {
            if !dir.is_dir() {
                checks.error("dir", format!("{}: not a folder", dir.display()));
            }
        }
        if let Some(file) = &self.file {
            if let Err(e) = std::fs::File::open(file) {
                checks.error("file", format!("{}: cannot read: {e}", file.display()));
            }
        }
        if ctx.upstream::<VideoFiles>().is_none() {
            checks.error("inputs", "the narration's videos must come from a video_files stage");
        }
        if !checks.is_empty() || !ctx.running() {
            return checks.is_empty().then(NarrationSource::default);
        }
        let listing = ctx.upstream_prepared::<VideoFiles>()?;
        let keep: HashSet<&str> = listing.videos.iter().map(|v| &*v.id).collect();
        if let Some(dir) = &self.dir {
            return match subtitle_files(dir, self.format, &keep) {
                Ok(files) => Some(NarrationSource { files, ..NarrationSource::default() }),
                Err(e) => {
                    checks.error("dir", format!("{}: cannot read: {e}", dir.display()));
                    None
                }
            };
        }
        let file = self.file.as_ref().expect("validated: dir or file");
        let started = std::time::Instant::now();
        match read_one_file(file, self.format, &keep, &listing.ids) {
            Ok(mut source) => {
                let mb = std::fs::metadata(file).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    "{}: {mb:.1} MB read in {secs:.1} s ({:.0} MB/s); kept the narration of {} listed videos",
                    file.display(),
                    mb / secs.max(1e-9),
                    source.cues.lock().map(|c| c.len()).unwrap_or(0)
                );
                if ctx.shape.process != 0 {
                    // Every process reads the same file; process 0 reports.
                    source.file_errors.clear();
                }
                Some(source)
            }
            Err(e) => {
                checks.error("file", e.to_string());
                None
            }
        }
    }

    fn build<'s>(
        &self,
        source: Arc<NarrationSource>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let videos = inputs.take::<VideoItem>(0)?;
        let file_errors = if ctx.index() == 0 { source.file_errors.clone() } else { Vec::new() };
        ctx.report_errors(file_errors.to_stream(ctx.scope));
        let results = videos.unary::<CapacityContainerBuilder<Vec<Result<Narration, ItemError>>>, _, _, _>(
            Pipeline,
            "Narration",
            move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for video in data.drain(..) {
                            let mut skipped = Vec::new();
                            let result = narration_of(&video, &source, &mut skipped);
                            session.give_iterator(skipped.into_iter().map(Err));
                            session.give(result);
                        }
                    });
                }
            },
        );
        let (narration, errors) = results.ok_err(|r| r);
        ctx.report_errors(errors);
        Ok(Some(Narration::wrap(narration)))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_operators::{ErrorStage, Narration, Reason, VideoItem};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    fn graph(t: &TestGraph, narration: &str) -> crate::graph::Graph {
        let videos = t.path("videos");
        std::fs::create_dir_all(&videos).unwrap();
        for id in ["a", "b", "c"] {
            std::fs::write(videos.join(format!("{id}.mp4")), b"x").unwrap();
        }
        t.graph(&format!(
            "[stages.videos]\ntype = \"video_files\"\ndir = \"{}\"\n\n[stages.narration]\ntype = \"narration\"\ninputs = [\"videos\"]\n{narration}\n",
            videos.display()
        ))
    }

    fn listed(t: &TestGraph) -> Vec<VideoItem> {
        ["a", "b", "c"]
            .iter()
            .map(|id| VideoItem { id: Arc::from(*id), path: t.path(&format!("videos/{id}.mp4")) })
            .collect()
    }

    #[test]
    fn a_folder_gives_each_video_its_file_and_names_the_missing_and_the_bad() {
        let t = TestGraph::new();
        let subs = t.path("subs");
        std::fs::create_dir_all(&subs).unwrap();
        std::fs::write(subs.join("a.en.vtt"), "WEBVTT\n\n00:00.000 --> 00:01.000\nhello there\n").unwrap();
        std::fs::write(
            subs.join("b.srt"),
            "1\n00:00:02,000 --> 00:00:01,000\ninverted\n\n2\n00:00:00,000 --> 00:00:01,000\nfine\n",
        )
        .unwrap();
        let graph = graph(&t, &format!("dir = \"{}\"", subs.display()));
        let items = listed(&t);
        let out = run_stage::<Narration>(&graph, "narration", move |scope| {
            vec![VideoItem::wrap(items.clone().to_stream(scope))]
        });
        let mut got: Vec<(String, usize)> =
            out.items.iter().map(|(_, n)| (n.video_id.clone(), n.cues().len())).collect();
        got.sort();
        assert_eq!(got, [("a".to_string(), 1), ("b".to_string(), 1)]);
        let mut errors: Vec<(&str, ErrorStage, bool)> =
            out.errors.iter().map(|e| (e.video_id.as_str(), e.stage, e.reason.loses_video())).collect();
        errors.sort_by_key(|e| e.0);
        assert_eq!(errors, [("b", ErrorStage::Narration, false), ("c", ErrorStage::Narration, true)]);
        assert!(out.errors.iter().any(|e| e.reason == Reason::NoNarration));
    }

    #[test]
    fn a_caption_file_is_read_once_and_a_cut_in_it_is_reported() {
        let t = TestGraph::new();
        let json = t.path("caption.json");
        std::fs::write(
            &json,
            "{\"a\": {\"start\": [0.0], \"end\": [1.0], \"text\": [\"a red ball\"]},\n \"zz\": {\"start\": [0.0], \"end\": [1.0], \"text\": [\"unlisted\"]},\n \"b\": {\"start\": [0.0], \"end\": [1.0], \"text\": [\"a blue",
        )
        .unwrap();
        let graph = graph(&t, &format!("file = \"{}\"", json.display()));
        let items = listed(&t);
        let out = run_stage::<Narration>(&graph, "narration", move |scope| {
            vec![VideoItem::wrap(items.clone().to_stream(scope))]
        });
        let ids: Vec<&str> = out.items.iter().map(|(_, n)| n.video_id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        assert!(out.errors.iter().any(|e| e.video_id == "?" && e.reason.to_string().contains("caption.json")));
        let missing: Vec<&str> =
            out.errors.iter().filter(|e| e.reason == Reason::NoNarration).map(|e| e.video_id.as_str()).collect();
        assert_eq!(missing.len(), 2, "b (cut) and c have no narration: {:?}", out.errors);
    }
}
