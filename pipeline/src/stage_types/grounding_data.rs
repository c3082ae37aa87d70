//! `grounding_data`: a grounding dataset, read once: the clip features of
//! the extraction graph's HDF5 file (group or flat layout) joined by video
//! id with the train, validation and test annotations (Charades-STA,
//! ActivityNet Captions or TACoS). Every query leaves with its split and its
//! video's features; every annotation that cannot be used (a malformed
//! line, a moment outside its video, a video without features) is a line of
//! `errors.jsonl` naming file and line, and moments reaching past their
//! video are clamped, with a line saying so.

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Message, Port, PrepareContext, StageType,
};
use crate::graph::PathResolver;
use crate::stage_types::hdf5_writer::H5Layout;
use locvtp_narration::grounding::{fit_query, read_file, GroundingFormat};
use locvtp_narration::Location;
use locvtp_operators::grounding::{ClipFeatures, GroundingSample, GroundingSplit};
use locvtp_operators::{ErrorStage, ItemError, Reason, RunStats};
use locvtp_store::{detect_layout, read_videos, Layout};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use timely::dataflow::operators::ToStream;

/// Options of `grounding_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroundingData {
    /// HDF5 feature file, as `hdf5_writer` writes it.
    pub features: PathBuf,
    /// `group` (`f[vid][dataset]`) or `flat` (`f[vid]`); omitted, it is
    /// read from the file (groups at its root mean `group`).
    #[serde(default)]
    pub layout: Option<H5Layout>,
    /// The dataset inside each video's group (group layout).
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Format of the annotation files: `charades_sta`, `activitynet` or
    /// `tacos`.
    #[serde(default)]
    pub format: GroundingFormat,
    /// Training annotations: what the model learns from, and the best
    /// fixed window baseline too.
    pub train: PathBuf,
    /// Validation annotations: only the choice of the epoch looks at them.
    /// Without them the last epoch is reported.
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// Test annotations: reported, never used to choose anything.
    pub test: PathBuf,
}

fn default_dataset() -> String {
    "c3d_features".to_string()
}

/// The dataset as read, for the stage's build on worker 0.
#[derive(Debug, Default)]
pub struct GroundingDataset {
    pub samples: Vec<GroundingSample>,
    pub errors: Vec<ItemError>,
    /// Width of the features (known in `check` as well).
    pub feature_dim: usize,
    /// Annotated videos, and those of them with features.
    pub videos_annotated: usize,
    pub videos_used: usize,
}

impl GroundingData {
    fn splits(&self) -> Vec<(GroundingSplit, &Path)> {
        let mut out = vec![(GroundingSplit::Train, self.train.as_path())];
        out.extend(self.val.as_deref().map(|p| (GroundingSplit::Val, p)));
        out.push((GroundingSplit::Test, self.test.as_path()));
        out
    }

    fn layout(&self) -> anyhow::Result<Layout> {
        match self.layout {
            Some(H5Layout::Group) => Ok(Layout::Group { dataset: self.dataset.clone() }),
            Some(H5Layout::Flat) => Ok(Layout::Flat),
            None => detect_layout(&self.features, &self.dataset),
        }
    }
}

/// The width of the first video's features, reading nothing else.
fn feature_dim(path: &Path, layout: &Layout) -> anyhow::Result<usize> {
    let first = locvtp_store::list_videos(path)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: holds no video", path.display()))?;
    Ok(locvtp_store::read_features(path, &first, layout)?.1[1])
}

/// Reads the features and every split's annotations and joins them.
/// `Err` only for what makes the whole dataset unusable.
pub fn read_dataset(opts: &GroundingData) -> anyhow::Result<GroundingDataset> {
    let layout = opts.layout()?;
    let mut out = GroundingDataset::default();
    let mut features: HashMap<String, (Arc<ClipFeatures>, Option<f64>)> = HashMap::new();
    for video in read_videos(&opts.features, &layout)? {
        match video {
            Ok(v) => {
                if out.feature_dim == 0 {
                    out.feature_dim = v.dim;
                }
                if v.dim != out.feature_dim {
                    anyhow::bail!(
                        "{}: video {} has features of width {}, the first video {}",
                        opts.features.display(),
                        v.video_id,
                        v.dim,
                        out.feature_dim
                    );
                }
                let duration = v.duration_s();
                let clips = ClipFeatures { values: v.values, clips: v.clips, dim: v.dim };
                features.insert(v.video_id, (Arc::new(clips), duration));
            }
            Err(e) => out.errors.push(ItemError::new("?", ErrorStage::Annotations, Reason::unreadable(&e))),
        }
    }
    let mut annotated: BTreeMap<String, BTreeSet<GroundingSplit>> = BTreeMap::new();
    for (split, path) in opts.splits() {
        let parsed = read_file(path, opts.format).map_err(|e| anyhow::anyhow!("{e}"))?;
        out.errors.extend(parsed.errors.iter().map(ItemError::annotation));
        out.errors.extend(parsed.warnings.iter().filter_map(ItemError::annotation_warning));
        let mut missing: BTreeMap<String, usize> = BTreeMap::new();
        for q in parsed.items {
            annotated.entry(q.video_id.clone()).or_default().insert(split);
            let Some((clips, stored_duration)) = features.get(&q.video_id) else {
                *missing.entry(q.video_id.clone()).or_default() += 1;
                continue;
            };
            let at = Location::line(path, q.line).with_video(&q.video_id);
            let Some(duration) = q.duration_s.or(*stored_duration) else {
                let message = format!(
                    "{at}: the video's duration is unknown: the annotation gives none and the feature file has no fps and frames attributes"
                );
                out.errors.push(ItemError::new(
                    &q.video_id,
                    ErrorStage::Annotations,
                    Reason::AnnotationSkipped { message },
                ));
                continue;
            };
            match fit_query(&q, duration, &at) {
                Ok((fitted, warning)) => {
                    out.errors.extend(warning.as_ref().and_then(ItemError::annotation_warning));
                    out.samples.push(GroundingSample {
                        split,
                        video_id: Arc::from(fitted.video_id.as_str()),
                        sentence: fitted.sentence,
                        start_s: fitted.start_s,
                        end_s: fitted.end_s,
                        duration_s: duration,
                        features: clips.clone(),
                    });
                }
                Err(e) => out.errors.push(ItemError::annotation(&e)),
            }
        }
        out.errors.extend(missing.into_iter().map(|(video, queries)| {
            ItemError::new(
                video,
                ErrorStage::Annotations,
                Reason::NoFeatures { split: split.name().to_string(), queries, file: opts.features.clone() },
            )
        }));
    }
    // A video in two splits lets the model see test moments' video while
    // training: the numbers would not mean what they say.
    let shared: Vec<String> = annotated
        .iter()
        .filter(|(_, splits)| splits.len() > 1)
        .map(|(v, splits)| format!("{v} ({})", splits.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")))
        .collect();
    if !shared.is_empty() {
        anyhow::bail!(
            "{} videos are annotated in more than one split, first: {}",
            shared.len(),
            shared.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    out.videos_annotated = annotated.len();
    out.videos_used = annotated.keys().filter(|v| features.contains_key(*v)).count();
    Ok(out)
}

impl StageType for GroundingData {
    const TYPE: &'static str = "grounding_data";
    const ABOUT: &'static str =
        "Joins a feature file with train/val/test grounding annotations; emits every query with its video's features.";
    const INPUTS: &'static [Port] = &[];
    const OUTPUT: Option<DataKind> = Some(DataKind::GroundingQueries);
    type Prepared = GroundingDataset;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input("features", &mut self.features);
        paths.input("train", &mut self.train);
        paths.input_opt("val", &mut self.val);
        paths.input("test", &mut self.test);
    }

    fn validate(&self, checks: &mut Checks) {
        if self.dataset.is_empty() {
            checks.error("dataset", "must not be empty");
        }
        let mut seen = BTreeMap::new();
        for (split, path) in self.splits() {
            if let Some(other) = seen.insert(path.to_path_buf(), split) {
                checks.error(
                    split.name(),
                    format!("the same file as `{}`: the splits must not share queries", other.name()),
                );
            }
        }
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<GroundingDataset> {
        if !self.features.is_file() {
            checks.error("features", format!("{}: no such file", self.features.display()));
        }
        for (split, path) in self.splits() {
            if !path.is_file() {
                checks.error(split.name(), format!("{}: no such file", path.display()));
            }
        }
        if !checks.is_empty() {
            return None;
        }
        if ctx.running() && ctx.shape.process == 0 {
            match read_dataset(self) {
                Ok(d) => Some(d),
                Err(e) => {
                    checks.fail("", &e);
                    None
                }
            }
        } else {
            match self.layout().and_then(|l| feature_dim(&self.features, &l)) {
                Ok(feature_dim) => Some(GroundingDataset { feature_dim, ..Default::default() }),
                Err(e) => {
                    checks.fail("features", &e);
                    None
                }
            }
        }
    }

    fn build<'s>(
        &self,
        data: Arc<GroundingDataset>,
        ctx: &mut BuildContext<'_, 's>,
        _inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let first = ctx.index() == 0;
        if first {
            RunStats::add(&ctx.run.stats.videos_total, data.videos_annotated as u64);
            RunStats::add(&ctx.run.stats.videos_done, data.videos_used as u64);
        }
        let (samples, errors) = if first { (data.samples.clone(), data.errors.clone()) } else { Default::default() };
        ctx.report_errors(errors.to_stream(ctx.scope));
        Ok(Some(GroundingSample::wrap(samples.to_stream(ctx.scope))))
    }
}

#[cfg(test)]
mod tests {
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_operators::grounding::{GroundingSample, GroundingSplit};
    use locvtp_operators::{ErrorStage, Reason};
    use locvtp_store::{write_hdf5, Layout, RunAttrs, SpoolRecord};

    fn record(id: &str, clips: u32, fps: f64, frames: u64) -> SpoolRecord {
        SpoolRecord {
            video_id: id.into(),
            num_clips: clips,
            dim: 3,
            fps,
            frames,
            features: (0..clips * 3).map(|i| i as f32).collect(),
        }
    }

    #[test]
    fn annotations_join_features_by_video_and_problems_are_reported() {
        let t = TestGraph::new();
        // Three videos of 10 s (25 fps, 250 frames) in the flat layout; `gone` has none.
        let recs = vec![record("a", 4, 25.0, 250), record("b", 2, 25.0, 250), record("c", 3, 25.0, 250)];
        write_hdf5(&t.path("f.h5"), Layout::Flat, &RunAttrs::default(), &recs).unwrap();
        std::fs::write(t.path("train.txt"), "a 0 4##a red circle\na 4 12.5##past the end\nbad line\ngone 0 1##x\n")
            .unwrap();
        std::fs::write(t.path("val.txt"), "b 1 2##a blue square\n").unwrap();
        std::fs::write(t.path("test.txt"), "c 2 3##a green cross\nc 11 12##outside\n").unwrap();
        let graph = t.graph(&format!(
            "[stages.data]\ntype = \"grounding_data\"\nfeatures = \"{}\"\ntrain = \"{}\"\nval = \"{}\"\ntest = \"{}\"\n",
            t.path("f.h5").display(),
            t.path("train.txt").display(),
            t.path("val.txt").display(),
            t.path("test.txt").display()
        ));
        let out = run_stage::<GroundingSample>(&graph, "data", |_| vec![]);
        let got: Vec<(GroundingSplit, &str, f64, f64, f64)> =
            out.items.iter().map(|(_, s)| (s.split, &*s.video_id, s.start_s, s.end_s, s.duration_s)).collect();
        assert_eq!(
            got,
            [
                (GroundingSplit::Train, "a", 0.0, 4.0, 10.0),
                (GroundingSplit::Train, "a", 4.0, 10.0, 10.0),
                (GroundingSplit::Val, "b", 1.0, 2.0, 10.0),
                (GroundingSplit::Test, "c", 2.0, 3.0, 10.0),
            ]
        );
        assert_eq!(out.items[0].1.features.clips, 4);
        assert!(std::sync::Arc::ptr_eq(&out.items[0].1.features, &out.items[1].1.features), "one copy per video");
        let lines: Vec<String> = out.errors.iter().map(|e| e.reason.to_string()).collect();
        assert!(out.errors.iter().all(|e| e.stage == ErrorStage::Annotations && !e.reason.loses_video()));
        assert_eq!(out.errors.len(), 4, "{lines:?}");
        assert!(lines
            .iter()
            .any(|l| l.contains("train.txt:3") && l.contains("expected `video_id start end##sentence`")));
        assert!(lines.iter().any(|l| l.contains("train.txt:2 (video a): moment 4-12.5 s clamped to 4-10 s")));
        assert!(lines.iter().any(|l| l.contains("test.txt:2 (video c): moment 11-12 s lies outside the video")));
        assert!(out.errors.iter().any(|e| e.video_id == "gone"
            && matches!(&e.reason, Reason::NoFeatures { queries: 1, split, .. } if split == "train")));
    }

    #[test]
    fn a_video_in_two_splits_stops_the_run_before_it_starts() {
        let t = TestGraph::new();
        write_hdf5(&t.path("f.h5"), "c3d_features", &RunAttrs::default(), &[record("a", 2, 25.0, 50)]).unwrap();
        std::fs::write(t.path("train.txt"), "a 0 1##x\n").unwrap();
        std::fs::write(t.path("test.txt"), "a 1 2##y\n").unwrap();
        let graph = t.graph(&format!(
            "[stages.data]\ntype = \"grounding_data\"\nfeatures = \"{}\"\ntrain = \"{}\"\ntest = \"{}\"\n",
            t.path("f.h5").display(),
            t.path("train.txt").display(),
            t.path("test.txt").display()
        ));
        let err = crate::engine::prepare(&graph, &crate::engine::ClusterShape::single(), crate::engine::Mode::Run)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("1 videos are annotated in more than one split, first: a (train, test)"), "{err}");
    }
}
