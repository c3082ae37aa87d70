//! `hdf5_writer`: every video's features in one HDF5 file, either one group
//! per video id holding dataset `c3d_features` `[num_clips, dim]`
//! (`f[vid]["c3d_features"]`) or one dataset per video id at the root
//! (`f[vid][:]`), the two layouts 2D-TAN's loaders read. Finished videos go
//! to a crash-safe spool first; the file is assembled under a temporary
//! name and renamed when the run completes, and a run started again skips
//! every video already in the spool.

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
use crate::stage_types::c3d_encode::{C3dEncode, Encoder};
use locvtp_operators::writer::{write_features, FeatureStore, Hdf5Store, WriterConfig};
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

/// The writer's spool (taken by worker 0) and the attributes of its file.
#[derive(Debug)]
pub struct Writer {
    spool: Mutex<Option<Spool>>,
    attrs: RunAttrs,
}

/// What the file's attributes say about the features: clip geometry,
/// layer, and the weights that produced them.
fn run_attrs(ctx: &PrepareContext<'_>) -> anyhow::Result<RunAttrs> {
    let (clip_frames, stride, layer, checkpoint) =
        match (ctx.upstream::<C3dEncode>(), ctx.upstream_prepared::<C3dEncode>()) {
            (Some((_, encode)), Some(encoder)) => {
                let encoder: &Encoder = encoder;
                let checkpoint = match &encode.checkpoint {
                    Some(p) => locvtp_model::checkpoint::file_sha256(p)?,
                    None => format!("random-init:{}", ctx.graph.run.seed),
                };
                (encoder.clip_frames, encoder.stride, encode.layer.name().to_string(), checkpoint)
            }
            _ => (16, 16, "projection".to_string(), "unknown".to_string()),
        };
    Ok(RunAttrs { clip_frames: clip_frames as u32, stride: stride as u32, layer, checkpoint })
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
        let attrs = match run_attrs(ctx) {
            Ok(a) => a,
            Err(e) => {
                checks.fail("", &e);
                return None;
            }
        };
        let spool = spool_path(&self.path);
        if !ctx.running() || ctx.shape.process != 0 {
            return Some(Writer { spool: Mutex::new(None), attrs });
        }
        if self.path.exists() && !spool.exists() {
            tracing::info!("{} exists and will be replaced when this run completes", self.path.display());
        }
        match Spool::open_index(&spool) {
            Ok((spool, _)) => Some(Writer { spool: Mutex::new(Some(spool)), attrs }),
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
            Box::new(Hdf5Store { path: self.path.clone(), layout: self.layout(), attrs: writer.attrs.clone(), spool })
                as Box<dyn FeatureStore>
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
}
