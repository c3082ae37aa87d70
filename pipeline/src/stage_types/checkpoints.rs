//! `checkpoints`: saves the training state the `train` stage hands over:
//! `epoch-NNN.safetensors` at each epoch end, `step-NNNNNN.safetensors`
//! every `checkpoint_every_steps`, and always `last.safetensors`, which a
//! run started again resumes from (also after a stop by a signal).

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
use locvtp_operators::train::{Snapshot, SnapshotReason, TrainEvent};
use locvtp_operators::RunShared;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Options of `checkpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Checkpoints {
    /// Folder, relative to `run.output_dir`.
    pub dir: PathBuf,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints { dir: PathBuf::from("checkpoints") }
    }
}

/// The file a snapshot is saved under besides `last.safetensors` (a
/// snapshot taken for a stop is only `last.safetensors`).
pub fn snapshot_name(snapshot: &Snapshot) -> Option<String> {
    let meta = &snapshot.state.meta;
    match snapshot.reason {
        SnapshotReason::EpochEnd => Some(format!("epoch-{:03}.safetensors", meta.epoch)),
        SnapshotReason::Periodic => Some(format!("step-{:06}.safetensors", meta.step)),
        SnapshotReason::Stop => None,
    }
}

fn save(dir: &Path, snapshot: &Snapshot, run: &RunShared, stage: &str) {
    let mut names = vec!["last.safetensors".to_string()];
    names.extend(snapshot_name(snapshot));
    for name in names.iter().rev() {
        let path = dir.join(name);
        if let Err(e) = snapshot.state.save(&path) {
            run.fail(stage, format!("{}: {e:#}", path.display()));
            return;
        }
    }
    run.record_output(
        stage,
        serde_json::json!({ "dir": dir.display().to_string(), "last": dir.join("last.safetensors").display().to_string(), "step": snapshot.state.meta.step }),
    );
}

impl StageType for Checkpoints {
    const TYPE: &'static str = "checkpoints";
    const ABOUT: &'static str =
        "Saves the training state at epoch ends (and every N steps) as safetensors; runs resume from it.";
    const INPUTS: &'static [Port] = &[Port { name: "training", kind: DataKind::Training }];
    const OUTPUT: Option<DataKind> = None;
    type Prepared = ();

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.dir);
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("dir", &self.dir)]
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<()> {
        if ctx.running() && ctx.shape.process == 0 {
            if let Err(e) = std::fs::create_dir_all(&self.dir) {
                checks.error("dir", format!("{}: cannot create: {e}", self.dir.display()));
            }
        } else if self.dir.exists() && !self.dir.is_dir() {
            checks.error("dir", format!("{}: not a folder", self.dir.display()));
        }
        checks.is_empty().then_some(())
    }

    fn build<'s>(
        &self,
        _: Arc<()>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let events = inputs.take::<TrainEvent>(0)?;
        let (dir, run, stage) = (self.dir.clone(), ctx.run.clone(), ctx.stage.name.clone());
        events.sink(Pipeline, "Checkpoints", move |(input, _frontier)| {
            input.for_each(|_cap, data| {
                for event in data.drain(..) {
                    if let TrainEvent::Snapshot(snapshot) = event {
                        save(&dir, &snapshot, &run, &stage);
                    }
                }
            });
        });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Message;
    use crate::stage_types::testing::{config, run_stage, TestGraph};
    use locvtp_model::train::{read_training_meta, Adam, TrainMeta, TrainingSnapshot};
    use locvtp_model::{LocVtp, ModelConfig};
    use locvtp_operators::samples::StepInfo;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn epoch_ends_get_their_own_file_and_every_snapshot_becomes_last() {
        let t = TestGraph::new();
        let graph = t.graph("[stages.checkpoints]\ntype = \"checkpoints\"\ninputs = [\"train\"]\n");
        let cfg = ModelConfig::from_toml_file(&config("c3d-tiny.toml")).unwrap();
        let model = LocVtp::new(&cfg, tch::Device::Cpu, 0);
        let adam = Adam::new(&model);
        let snapshot = |step: u64, reason| {
            let meta = TrainMeta { epoch: 1, step: step as i64 + 1, seed: 0, extra: Default::default() };
            Arc::new(Snapshot {
                at: StepInfo { step, epoch: 0, epoch_end: reason == SnapshotReason::EpochEnd, steps_total: 8 },
                reason,
                state: TrainingSnapshot::take(&model, &adam, &meta).unwrap(),
            })
        };
        let events = vec![
            TrainEvent::Snapshot(snapshot(3, SnapshotReason::EpochEnd)),
            TrainEvent::Snapshot(snapshot(4, SnapshotReason::Stop)),
        ];
        let events = std::sync::Mutex::new(Some(events));
        run_stage::<TrainEvent>(&graph, "checkpoints", move |scope| {
            let events = events.lock().unwrap().take().unwrap_or_default();
            vec![TrainEvent::wrap(events.to_stream(scope))]
        });
        let dir = t.path("out/checkpoints");
        assert!(dir.join("epoch-001.safetensors").exists());
        assert_eq!(read_training_meta(&dir.join("epoch-001.safetensors")).unwrap().step, 4);
        assert_eq!(read_training_meta(&dir.join("last.safetensors")).unwrap().step, 5, "the stop's state is last");
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
