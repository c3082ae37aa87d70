//! `npy_writer`: one `<video id>.npy` file per video in a folder, float32
//! `[num_clips, dim]`, readable with `numpy.load` (the layout of the
//! video_features project and of loaders that read a folder of arrays).
//! Each file is written under a temporary name and renamed once complete,
//! so the folder is its own record of finished videos: a run started again
//! skips every video whose file is there. The folder's `.fingerprint.json`
//! records the weights, layer, model and preprocessing of its features; a
//! run with other settings stops before adding its files to them.

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
use crate::stage_types::c3d_encode::{resume_conflict, upstream_attrs};
use crate::stage_types::video_files::VideoFiles;
use locvtp_operators::writer::{write_features, FeatureStore, NpyStore, WriterConfig};
use locvtp_operators::FeatureMsg;
use locvtp_store::npy::FINGERPRINT_FILE;
use locvtp_store::RunAttrs;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of `npy_writer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct NpyWriter {
    /// Output folder, relative to `run.output_dir`; it receives
    /// `<video id>.npy` for every video.
    pub dir: PathBuf,
}

impl Default for NpyWriter {
    fn default() -> Self {
        NpyWriter { dir: PathBuf::from("features") }
    }
}

/// What the writer's store needs: the videos the run skips, which the
/// folder must hold in the end.
#[derive(Debug)]
pub struct NpyPrepared {
    skipped: BTreeSet<String>,
}

impl NpyWriter {
    /// Fails when the folder holds features made with other attributes than
    /// `attrs` (or by a program that did not record them), saying what
    /// differs and how to start fresh. Returns whether it holds any.
    fn check_folder(&self, attrs: &RunAttrs, stage: &str) -> Result<bool, String> {
        let files = locvtp_store::npy::videos_in(&self.dir).map_err(|e| format!("{e:#}"))?;
        if files.is_empty() {
            return Ok(false);
        }
        let held = format!("{} holds {} .npy files of an earlier run", self.dir.display(), files.len());
        let fresh = format!("remove the .npy files of {} (or the folder)", self.dir.display());
        let elsewhere = format!("another stages.{stage}.dir or run.output_dir");
        match locvtp_store::npy::read_fingerprint(&self.dir).map_err(|e| format!("{e:#}; to start fresh, {fresh}"))? {
            Some(earlier) => {
                let differences = attrs.differences(&earlier);
                if differences.is_empty() {
                    Ok(true)
                } else {
                    Err(resume_conflict(&held, &differences, &fresh, &elsewhere))
                }
            }
            None => Err(format!(
                "{} holds {} .npy files but no {FINGERPRINT_FILE} recording the weights and preprocessing they \
                 were extracted with (an earlier version or another program wrote them), so this run cannot add \
                 its own to them safely. To start fresh, {fresh}; or write elsewhere ({elsewhere})",
                self.dir.display(),
                files.len()
            )),
        }
    }
}

impl StageType for NpyWriter {
    const TYPE: &'static str = "npy_writer";
    const ABOUT: &'static str = "Writes each video's features to <dir>/<video id>.npy, atomically and resumably.";
    const INPUTS: &'static [Port] = &[Port { name: "features", kind: DataKind::Features }];
    const OUTPUT: Option<DataKind> = None;
    type Prepared = NpyPrepared;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.dir);
    }

    fn validate(&self, checks: &mut Checks) {
        if self.dir.as_os_str().is_empty() {
            checks.error("dir", "must not be empty");
        }
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("dir", &self.dir)]
    }

    fn finished_items(&self) -> anyhow::Result<Option<BTreeSet<String>>> {
        Ok(Some(locvtp_store::npy::videos_in(&self.dir)?))
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<NpyPrepared> {
        let attrs = upstream_attrs(ctx)?;
        if self.dir.exists() && !self.dir.is_dir() {
            checks.error("dir", format!("{}: exists and is not a folder", self.dir.display()));
            return None;
        }
        // Only process 0 writes the folder (other processes of a cluster
        // route their features to it) and checks what it holds.
        if ctx.shape.process != 0 {
            return Some(NpyPrepared { skipped: BTreeSet::new() });
        }
        let holds_files = match self.check_folder(&attrs, &ctx.stage.name) {
            Ok(holds) => holds,
            Err(problem) => {
                checks.error("dir", problem);
                return None;
            }
        };
        if !ctx.running() {
            return Some(NpyPrepared { skipped: BTreeSet::new() });
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            checks.error("dir", format!("{}: cannot create the folder: {e}", self.dir.display()));
            return None;
        }
        // Files a killed run was writing; their videos are not finished and
        // run again.
        match locvtp_store::npy::remove_partials(&self.dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{}: removed {n} incomplete files of an earlier run", self.dir.display()),
            Err(e) => {
                checks.fail("dir", &e);
                return None;
            }
        }
        // Written before any feature file, so that every file in the folder
        // has its attributes on record.
        if !holds_files {
            if let Err(e) = locvtp_store::npy::write_fingerprint(&self.dir, &attrs) {
                checks.fail("dir", &e);
                return None;
            }
        }
        let skipped = ctx.upstream_prepared::<VideoFiles>().map(|l| l.finished.clone()).unwrap_or_default();
        Some(NpyPrepared { skipped })
    }

    fn build<'s>(
        &self,
        prepared: Arc<NpyPrepared>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let features = inputs.take::<FeatureMsg>(0)?;
        let store = (ctx.index() == 0)
            .then(|| Box::new(NpyStore::new(self.dir.clone(), prepared.skipped.clone())) as Box<dyn FeatureStore>);
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
    use locvtp_operators::{ErrorStage, FeatureMsg, Reason};
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    fn feature(v: &str, i: u64) -> FeatureMsg {
        FeatureMsg::Feature { video: Arc::from(v), index: i, values: vec![i as f32, -1.5, 0.25] }
    }

    fn end(v: &str, clips: u64) -> FeatureMsg {
        FeatureMsg::End { video: Arc::from(v), clips, frames: clips * 16, fps: 25.0 }
    }

    #[test]
    fn each_complete_video_gets_its_file_and_a_run_again_skips_them() {
        let t = TestGraph::new();
        let graph = t.graph("[stages.write]\ntype = \"npy_writer\"\ninputs = [\"encode\"]\n");
        let folder = t.path("out/features");
        std::fs::create_dir_all(&folder).unwrap();
        // Left by a run killed while writing `c`.
        std::fs::write(folder.join(".c.npy.partial"), b"\x93NUMPY").unwrap();
        let out = run_stage::<FeatureMsg>(&graph, "write", |scope| {
            let msgs = vec![feature("a", 1), feature("a", 0), end("a", 2), feature("b", 0), end("b", 2)];
            vec![FeatureMsg::wrap(msgs.to_stream(scope))]
        });
        assert!(out.items.is_empty(), "a sink emits nothing");
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert_eq!((out.errors[0].video_id.as_str(), out.errors[0].stage), ("b", ErrorStage::Write));
        assert_eq!(out.errors[0].reason, Reason::IncompleteFeatures { expected: 2, got: 1 });
        let (values, shape) = locvtp_store::npy::read_npy(&folder.join("a.npy")).unwrap();
        assert_eq!(shape, [2, 3]);
        assert_eq!(values, [0.0, -1.5, 0.25, 1.0, -1.5, 0.25]);
        assert!(!folder.join("b.npy").exists(), "an incomplete video has no file");
        assert!(!folder.join(".c.npy.partial").exists(), "the earlier run's partial file is cleared");

        let stage = graph.stage("write").unwrap();
        let done = stage.options.finished_items().unwrap().expect("the folder tells which videos are done");
        assert_eq!(done.into_iter().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_an_error_on_dir() {
        let t = TestGraph::new();
        std::fs::create_dir_all(t.path("out")).unwrap();
        std::fs::write(t.path("out/blocker"), b"a file").unwrap();
        let graph =
            t.graph("[stages.write]\ntype = \"npy_writer\"\ninputs = [\"encode\"]\ndir = \"blocker/features\"\n");
        let err = crate::engine::prepare(&graph, &crate::engine::ClusterShape::single(), crate::engine::Mode::Run)
            .err()
            .expect("prepare fails")
            .to_string();
        assert!(err.contains("stages.write.dir") && err.contains("blocker"), "{err}");
    }

    #[test]
    fn files_of_other_settings_or_of_unknown_origin_stop_the_run() {
        use crate::engine::{prepare, ClusterShape, Mode};
        use locvtp_store::npy::{read_fingerprint, write_fingerprint, write_npy, FINGERPRINT_FILE};
        use locvtp_store::RunAttrs;
        let t = TestGraph::new();
        let graph = t.graph("[stages.write]\ntype = \"npy_writer\"\ninputs = [\"encode\"]\n");
        let folder = t.path("out/features");
        std::fs::create_dir_all(&folder).unwrap();
        // With no encoder upstream, this run's checkpoint is `unknown`.
        let this_run = RunAttrs { checkpoint: "unknown".into(), ..RunAttrs::default() };
        let other = RunAttrs { layer: "fc6".into(), ..this_run.clone() };

        // A stale record in a folder without features is simply replaced.
        write_fingerprint(&folder, &other).unwrap();
        prepare(&graph, &ClusterShape::single(), Mode::Run).expect("nothing to mix with");
        assert_eq!(read_fingerprint(&folder).unwrap(), Some(this_run.clone()));

        write_npy(&folder.join("a.npy"), [1, 1], &[1.0]).unwrap();
        write_fingerprint(&folder, &other).unwrap();
        for mode in [Mode::Check, Mode::Run] {
            let err = prepare(&graph, &ClusterShape::single(), mode).err().expect("refused").to_string();
            assert!(err.contains("stages.write.dir") && err.contains("holds 1 .npy files"), "{err}");
            assert!(err.contains("What differs: layer: fc6 (earlier run) vs (not recorded) (this run)."), "{err}");
        }
        assert_eq!(read_fingerprint(&folder).unwrap(), Some(other), "the record of the files stays");

        std::fs::remove_file(folder.join(FINGERPRINT_FILE)).unwrap();
        let err = prepare(&graph, &ClusterShape::single(), Mode::Check).err().expect("refused").to_string();
        assert!(err.contains(&format!("no {FINGERPRINT_FILE}")) && err.contains("remove the .npy files"), "{err}");

        write_fingerprint(&folder, &this_run).unwrap();
        prepare(&graph, &ClusterShape::single(), Mode::Run).expect("the same settings resume");
    }
}
