//! `hdf5_writer`: every video's features in one HDF5 file, either one group
//! per video id holding dataset `c3d_features` `[num_clips, dim]`
//! (`f[vid]["c3d_features"]`) or one dataset per video id at the root
//! (`f[vid][:]`), the two layouts 2D-TAN's loaders read. Finished videos go
//! to a crash-safe spool first; the file is assembled under a temporary
//! name, checked to hold every video the run reports, and renamed only when
//! the whole run succeeds, so a failing run never replaces an earlier file.
//! A run started again skips every video already in the spool, provided
//! the spool's header records the same weights, layer, model and
//! preprocessing as this run's; otherwise it stops before any work.

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
use crate::stage_types::c3d_encode::{resume_conflict, upstream_attrs};
use crate::stage_types::video_files::VideoFiles;
use locvtp_operators::writer::{write_features, FeatureStore, Hdf5Store, Reported, WriterConfig};
use locvtp_operators::FeatureMsg;
use locvtp_store::{spool_path, Layout, RunAttrs, Spool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Options of `hdf5_writer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Hdf5Writer {
    /// Output file, relative to `run.output_dir`.
    pub path: PathBuf,
    /// Where each video's features go: `group`, a group per video holding
    /// the dataset `dataset` (`f[vid]["c3d_features"]`, as 2D-TAN's
    /// ActivityNet loader reads them), or `flat`, a dataset per video at the
    /// root (`f[vid][:]`, as its TACoS loader reads them).
    pub layout: H5Layout,
    /// Name of the dataset inside each video's group (`group` layout only).
    pub dataset: String,
}

/// The `layout` option of `hdf5_writer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum H5Layout {
    /// `f[vid][dataset]`.
    #[default]
    Group,
    /// `f[vid]`.
    Flat,
}

const DEFAULT_DATASET: &str = "c3d_features";

impl Default for Hdf5Writer {
    fn default() -> Self {
        Hdf5Writer { path: PathBuf::from("features.h5"), layout: H5Layout::Group, dataset: DEFAULT_DATASET.to_string() }
    }
}

impl Hdf5Writer {
    /// Where each video's features sit in the file.
    pub fn layout(&self) -> Layout {
        match self.layout {
            H5Layout::Group => Layout::Group { dataset: self.dataset.clone() },
            H5Layout::Flat => Layout::Flat,
        }
    }
}

/// The writer's spool (taken by worker 0), the attributes of its file, and
/// the videos the run skips, which the file must hold in the end.
#[derive(Debug)]
pub struct Writer {
    spool: Mutex<Option<Spool>>,
    attrs: RunAttrs,
    skipped: BTreeSet<String>,
}

/// Fails when the spool at `spool` holds videos made with other attributes
/// than `attrs`, saying what differs and how to start fresh.
fn check_spool(spool: &Path, attrs: &RunAttrs, stage: &str) -> Result<(), String> {
    if !spool.exists() {
        return Ok(());
    }
    let (header, index, _) = locvtp_store::spool::read_header_and_index(spool).map_err(|e| format!("{e:#}"))?;
    let held = format!("{} holds {} videos extracted by an earlier run", spool.display(), index.len());
    let fresh = format!("remove {}", spool.display());
    let elsewhere = format!("another stages.{stage}.path or run.output_dir");
    match header {
        None if index.is_empty() => Ok(()),
        None => Err(format!(
            "{} holds {} videos spooled by an earlier version, which did not record the weights and \
             preprocessing they were extracted with, so they cannot be resumed safely. To start fresh, {fresh}; \
             or write elsewhere ({elsewhere})",
            spool.display(),
            index.len()
        )),
        Some(bytes) => {
            let earlier = RunAttrs::from_json(&bytes)
                .map_err(|e| format!("{}: unreadable header ({e:#}); to start fresh, {fresh}", spool.display()))?;
            let differences = attrs.differences(&earlier);
            if !differences.is_empty() {
                return Err(resume_conflict(&held, &differences, &fresh, &elsewhere));
            }
            let foreign = locvtp_store::spool::foreign_records(&index, &earlier.fingerprint());
            if foreign.is_empty() {
                return Ok(());
            }
            Err(format!(
                "{}: {} of its {} videos do not carry the fingerprint its header records (written by another \
                 run or program: {}), so it cannot be resumed safely. To start fresh, {fresh}",
                spool.display(),
                foreign.len(),
                index.len(),
                shown(&foreign)
            ))
        }
    }
}

/// The first few of `ids`, for a message.
fn shown(ids: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

impl StageType for Hdf5Writer {
    const TYPE: &'static str = "hdf5_writer";
    const ABOUT: &'static str =
        "Writes every video's features to one HDF5 file (a group or a dataset per video), resumably.";
    const INPUTS: &'static [Port] = &[Port { name: "features", kind: DataKind::Features }];
    const OUTPUT: Option<DataKind> = None;
    type Prepared = Writer;

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
        if self.layout == H5Layout::Flat && self.dataset != DEFAULT_DATASET {
            checks.error(
                "dataset",
                "names the dataset inside each video's group; the flat layout has none (f[vid] is the dataset)",
            );
        }
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("path", &self.path)]
    }

    fn finished_items(&self) -> anyhow::Result<Option<BTreeSet<String>>> {
        let spool = spool_path(&self.path);
        if !spool.exists() {
            return Ok(Some(BTreeSet::new()));
        }
        let (index, _) = locvtp_store::spool::read_index(&spool)?;
        Ok(Some(index.into_iter().map(|r| r.video_id).collect()))
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Writer> {
        let attrs = upstream_attrs(ctx)?;
        let spool = spool_path(&self.path);
        // Only process 0 writes the file (other processes of a cluster
        // route their features to it) and checks the spool it resumes.
        if ctx.shape.process != 0 {
            return Some(Writer { spool: Mutex::new(None), attrs, skipped: BTreeSet::new() });
        }
        if let Err(problem) = check_spool(&spool, &attrs, &ctx.stage.name) {
            checks.error("path", problem);
            return None;
        }
        if !ctx.running() {
            return Some(Writer { spool: Mutex::new(None), attrs, skipped: BTreeSet::new() });
        }
        if self.path.exists() && !spool.exists() {
            tracing::info!("{} exists and will be replaced when this run completes", self.path.display());
        }
        let skipped = ctx.upstream_prepared::<VideoFiles>().map(|l| l.finished.clone()).unwrap_or_default();
        match Spool::open_index(&spool, &attrs) {
            Ok((spool, _)) => Some(Writer { spool: Mutex::new(Some(spool)), attrs, skipped }),
            Err(e) => {
                checks.fail("path", &e);
                None
            }
        }
    }

    fn build<'s>(
        &self,
        writer: Arc<Writer>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let features = inputs.take::<FeatureMsg>(0)?;
        let spool = if ctx.index() == 0 { writer.spool.lock().unwrap_or_else(|e| e.into_inner()).take() } else { None };
        let store = spool.map(|spool| {
            Box::new(Hdf5Store {
                path: self.path.clone(),
                layout: self.layout(),
                attrs: writer.attrs.clone(),
                spool,
                reported: Reported { skipped: writer.skipped.clone(), stored: BTreeSet::new() },
            }) as Box<dyn FeatureStore>
        });
        let cfg = WriterConfig { stage: ctx.stage.name.clone(), counts: ctx.counts_items() };
        let errors = write_features(features, cfg, store, ctx.run.clone());
        ctx.report_errors(errors);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{run_stage, TestGraph};
    use locvtp_operators::{ErrorStage, FeatureMsg};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn complete_videos_reach_the_file_and_incomplete_ones_the_error_log() {
        let t = TestGraph::new();
        let graph = t.graph("[stages.write]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\n");
        let out = run_stage::<FeatureMsg>(&graph, "write", |scope| {
            let f = |v: &str, i: u64| FeatureMsg::Feature { video: Arc::from(v), index: i, values: vec![i as f32; 3] };
            let end = |v: &str, clips: u64| FeatureMsg::End { video: Arc::from(v), clips, frames: 32, fps: 16.0 };
            let msgs = vec![f("a", 1), f("a", 0), end("a", 2), f("b", 0), end("b", 2)];
            vec![FeatureMsg::wrap(msgs.to_stream(scope))]
        });
        assert!(out.items.is_empty(), "a sink emits nothing");
        assert_eq!(out.errors.len(), 1);
        assert_eq!((out.errors[0].video_id.as_str(), out.errors[0].stage), ("b", ErrorStage::Write));
        let h5 = t.path("out/features.h5");
        let all = locvtp_store::read_all(&h5, "c3d_features").unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(all["a"].1, [2, 3]);
        assert_eq!(all["a"].0, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert!(!t.path("out/.features.h5.spool").exists(), "the spool goes once the file is complete");
    }

    #[test]
    fn the_flat_layout_writes_f_vid_and_refuses_a_dataset_name() {
        let t = TestGraph::new();
        let graph = t.graph("[stages.write]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\nlayout = \"flat\"\n");
        let out = run_stage::<FeatureMsg>(&graph, "write", |scope| {
            let f = |i: u64| FeatureMsg::Feature { video: Arc::from("v"), index: i, values: vec![i as f32, 2.0] };
            let msgs =
                vec![f(0), f(1), f(2), FeatureMsg::End { video: Arc::from("v"), clips: 3, frames: 40, fps: 8.0 }];
            vec![FeatureMsg::wrap(msgs.to_stream(scope))]
        });
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let h5 = t.path("out/features.h5");
        let flat = locvtp_store::read_features(&h5, "v", locvtp_store::Layout::Flat).expect("f[vid] is the dataset");
        assert_eq!(flat, (vec![0.0, 2.0, 1.0, 2.0, 2.0, 2.0], [3, 2]));
        assert!(locvtp_store::read_features(&h5, "v", "c3d_features").is_err(), "no group layout as well");

        let text = format!(
            "[run]\noutput_dir = \"{}\"\n\n[stages.write]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\nlayout = \"flat\"\ndataset = \"feats\"\n",
            t.path("out").display()
        );
        let err = crate::graph::parse_stages(&text, &t.path("graph.toml"), t.dir.path()).unwrap_err().to_string();
        assert!(err.contains("stages.write.dataset") && err.contains("flat layout"), "{err}");
    }

    #[test]
    fn a_spool_of_other_settings_stops_check_and_run_naming_the_difference() {
        use crate::engine::{prepare, ClusterShape, Mode};
        use locvtp_store::{RunAttrs, Spool, SpoolRecord};
        let t = TestGraph::new();
        let graph = t.graph("[stages.write]\ntype = \"hdf5_writer\"\ninputs = [\"encode\"]\n");
        let spool = t.path("out/.features.h5.spool");
        let record =
            SpoolRecord { video_id: "a".into(), num_clips: 1, dim: 1, fps: 1.0, frames: 1, features: vec![0.0] };
        // With no encoder upstream, this run's checkpoint is `unknown`.
        let earlier = RunAttrs { checkpoint: "random-init:0".into(), ..RunAttrs::default() };
        let (mut s, _) = Spool::open(&spool, &earlier).unwrap();
        s.append(&record).unwrap();
        drop(s);
        let before = std::fs::read(&spool).unwrap();
        for mode in [Mode::Check, Mode::Run] {
            let err = prepare(&graph, &ClusterShape::single(), mode).err().expect("the spool is refused").to_string();
            assert!(err.contains("stages.write.path") && err.contains("holds 1 videos"), "{err}");
            assert!(err.contains("checkpoint: random-init:0 (earlier run) vs unknown (this run)"), "{err}");
            assert!(err.contains(&format!("remove {}", spool.display())), "{err}");
        }
        assert_eq!(std::fs::read(&spool).unwrap(), before, "the refused spool is left as it was");

        // A spool written before headers existed holds records of unknown
        // origin.
        let header_len = 12 + earlier.to_json().len();
        std::fs::write(&spool, &before[header_len..]).unwrap();
        let err = prepare(&graph, &ClusterShape::single(), Mode::Check).err().expect("refused").to_string();
        assert!(err.contains("earlier version") && err.contains("remove"), "{err}");

        // The same settings resume it.
        let same = RunAttrs { checkpoint: "unknown".into(), ..RunAttrs::default() };
        std::fs::remove_file(&spool).unwrap();
        let (mut s, _) = Spool::open(&spool, &same).unwrap();
        s.append(&record).unwrap();
        drop(s);
        assert!(prepare(&graph, &ClusterShape::single(), Mode::Check).is_ok());

        // A record another run appended under that header.
        let (mut s, _) = Spool::open(&spool, &earlier).unwrap();
        s.append(&SpoolRecord { video_id: "b".into(), ..record.clone() }).unwrap();
        drop(s);
        let err = prepare(&graph, &ClusterShape::single(), Mode::Check).err().expect("refused").to_string();
        assert!(err.contains("1 of its 2 videos do not carry the fingerprint"), "{err}");
        assert!(err.contains("run or program: b)") && err.contains(&format!("remove {}", spool.display())), "{err}");
    }
}
