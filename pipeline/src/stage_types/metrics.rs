//! `metrics`: one JSON line per training step (every loss term, the
//! learning rate, samples/s, the data-wait share) in `metrics.jsonl`, the
//! same scalars in TensorBoard event files, and the loss curve redrawn at
//! every epoch end.

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
use crate::tensorboard::EventWriter;
use locvtp_operators::train::{StepReport, TrainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Options of `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Metrics {
    /// JSON-lines file, relative to `run.output_dir`.
    pub path: PathBuf,
    /// Loss-curve picture (PNG), relative to `run.output_dir`.
    pub plot: PathBuf,
    /// Folder of TensorBoard event files, relative to `run.output_dir`
    /// (`tensorboard --logdir` it): each run adds a file, and the steps a
    /// resumed run trains again replace those of the run it resumed.
    pub tensorboard: PathBuf,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            path: PathBuf::from("metrics.jsonl"),
            plot: PathBuf::from("loss.png"),
            tensorboard: PathBuf::from("tensorboard"),
        }
    }
}

/// One step as a line of `metrics.jsonl`; steps count from 1.
pub fn metrics_line(r: &StepReport) -> serde_json::Value {
    let mut line = serde_json::json!({
        "step": r.at.step + 1, "epoch": r.at.epoch, "lr": r.lr, "samples": r.samples,
        "samples_per_s": r.samples_per_s, "data_wait_share": r.data_wait_share,
        "text_encoder_forwards": r.text_encoder_forwards,
    });
    for (k, v) in &r.terms {
        line[k.as_str()] = serde_json::json!(v);
    }
    line
}

/// One step's TensorBoard scalars: `loss/<term>` for every loss term, and
/// `train/lr`, `train/samples_per_s`, `train/data_wait_share`.
pub fn tensorboard_scalars(r: &StepReport) -> Vec<(String, f32)> {
    let mut scalars: Vec<(String, f32)> = r.terms.iter().map(|(k, v)| (format!("loss/{k}"), *v as f32)).collect();
    scalars.push(("train/lr".into(), r.lr as f32));
    scalars.push(("train/samples_per_s".into(), r.samples_per_s as f32));
    scalars.push(("train/data_wait_share".into(), r.data_wait_share as f32));
    scalars
}

fn write_scalars(writer: &mut EventWriter, r: &StepReport) -> std::io::Result<()> {
    let scalars = tensorboard_scalars(r);
    let named: Vec<(&str, f32)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    writer.scalars((r.at.step + 1) as i64, &named)
}

/// Keeps the lines of steps up to `step` (1-based): a resumed run trains
/// the later steps again, and each step keeps one line.
fn keep_steps_up_to(path: &Path, step: u64) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    locvtp_model::checkpoint::atomic_write(path, kept.as_bytes())
}

fn append_line(path: &Path, line: &serde_json::Value) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")?;
    f.sync_data()
}

impl StageType for Metrics {
    const TYPE: &'static str = "metrics";
    const ABOUT: &'static str = "Writes each training step's losses as JSON lines and draws the loss curve.";
    const INPUTS: &'static [Port] = &[Port { name: "training", kind: DataKind::Training }];
    const OUTPUT: Option<DataKind> = None;
    type Prepared = ();

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.path);
        paths.output(&mut self.plot);
        paths.output(&mut self.tensorboard);
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("path", &self.path), ("plot", &self.plot), ("tensorboard", &self.tensorboard)]
    }

    fn prepare(&self, _ctx: &PrepareContext<'_>, _checks: &mut Checks) -> Option<()> {
        Some(())
    }

    fn build<'s>(
        &self,
        _: Arc<()>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let events = inputs.take::<TrainEvent>(0)?;
        let (path, plot, stage, run) = (self.path.clone(), self.plot.clone(), ctx.stage.name.clone(), ctx.run.clone());
        let tensorboard = self.tensorboard.clone();
        let mut events_file: Option<EventWriter> = None;
        let mut first = true;
        let mut plotted = true;
        events.sink(Pipeline, "Metrics", move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for event in data.drain(..) {
                    let TrainEvent::Step(report) = event else { continue };
                    if std::mem::take(&mut first) {
                        if let Err(e) = keep_steps_up_to(&path, report.at.step) {
                            tracing::warn!("{}: {e:#}", path.display());
                        }
                        match EventWriter::create(&tensorboard, (report.at.step + 1) as i64) {
                            Ok(w) => events_file = Some(w),
                            Err(e) => run.fail(&stage, format!("{}: {e}", tensorboard.display())),
                        }
                        run.record_output(
                            &stage,
                            serde_json::json!({
                                "path": path.display().to_string(),
                                "plot": plot.display().to_string(),
                                "tensorboard": tensorboard.display().to_string(),
                            }),
                        );
                    }
                    if let Err(e) = append_line(&path, &metrics_line(&report)) {
                        run.fail(&stage, format!("{}: {e}", path.display()));
                    }
                    if let Some(w) = events_file.as_mut() {
                        let written = write_scalars(w, &report);
                        if let Err(e) = written.and_then(|()| if report.at.epoch_end { w.sync() } else { Ok(()) }) {
                            run.fail(&stage, format!("{}: {e}", w.path().display()));
                            events_file = None;
                        }
                    }
                    // The progress display reports training; each step is
                    // here for a closer look.
                    tracing::debug!(
                        "step {}/{} epoch {} loss {:.4}",
                        report.at.step + 1,
                        report.at.steps_total,
                        report.at.epoch,
                        report.total()
                    );
                    plotted = false;
                    if report.at.epoch_end {
                        redraw(&path, &plot);
                        plotted = true;
                    }
                }
            });
            if frontier.is_empty() && !plotted {
                redraw(&path, &plot);
                plotted = true;
                if let Some(w) = events_file.as_mut() {
                    if let Err(e) = w.sync() {
                        tracing::warn!("{}: {e}", w.path().display());
                    }
                }
            }
        });
        Ok(None)
    }
}

fn redraw(metrics: &Path, plot: &Path) {
    if let Err(e) = crate::plot::plot_losses(metrics, plot) {
        tracing::warn!("loss curve {}: {e:#}", plot.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locvtp_operators::samples::StepInfo;

    fn report(step: u64, total: f64) -> StepReport {
        StepReport {
            at: StepInfo { step, epoch: 0, epoch_end: false, steps_total: 4 },
            lr: 0.1,
            samples: 8,
            terms: vec![("total".into(), total)],
            samples_per_s: 8.0,
            data_wait_share: 0.25,
            text_encoder_forwards: 0,
            worker: 0,
            checksum: vec![],
        }
    }

    #[test]
    fn a_resumed_run_keeps_one_line_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        for s in 0..4 {
            append_line(&path, &metrics_line(&report(s, s as f64))).unwrap();
        }
        // Resumed from a checkpoint after step 2: steps 3 and 4 come again.
        keep_steps_up_to(&path, 2).unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2]);
    }

    #[test]
    fn each_step_becomes_a_line_and_the_curve_is_drawn() {
        use crate::engine::Message;
        use crate::stage_types::testing::{run_stage, TestGraph};
        use timely::dataflow::operators::ToStream;
        let t = TestGraph::new();
        let graph = t.graph("[stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]\n");
        std::fs::create_dir_all(t.path("out")).unwrap();
        run_stage::<TrainEvent>(&graph, "metrics", |scope| {
            let events: Vec<TrainEvent> = (0..3).map(|s| TrainEvent::Step(report(s, 3.0 - s as f64))).collect();
            vec![TrainEvent::wrap(events.to_stream(scope))]
        });
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(t.path("out/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["step"], 3);
        assert_eq!(lines[2]["total"], 1.0);
        assert!(t.path("out/loss.png").exists());

        // TensorBoard reads the same steps and values back.
        let scalars = crate::tensorboard::read_with_tensorboard(&t.path("out/tensorboard"));
        let mut tags: Vec<&str> = scalars.as_object().unwrap().keys().map(String::as_str).collect();
        tags.sort();
        assert_eq!(tags, ["loss/total", "train/data_wait_share", "train/lr", "train/samples_per_s"]);
        assert_eq!(scalars["loss/total"], serde_json::json!([[1, 3.0], [2, 2.0], [3, 1.0]]));
        let lr = f64::from(0.1f32);
        assert_eq!(scalars["train/lr"], serde_json::json!([[1, lr], [2, lr], [3, lr]]));
        assert_eq!(scalars["train/samples_per_s"], serde_json::json!([[1, 8.0], [2, 8.0], [3, 8.0]]));
        assert_eq!(scalars["train/data_wait_share"], serde_json::json!([[1, 0.25], [2, 0.25], [3, 0.25]]));
    }

    #[test]
    fn every_loss_term_is_a_scalar() {
        let mut r = report(4, 2.0);
        r.terms.push(("coarse".into(), 0.5));
        let tags: Vec<String> = tensorboard_scalars(&r).into_iter().map(|(k, _)| k).collect();
        assert_eq!(tags, ["loss/total", "loss/coarse", "train/lr", "train/samples_per_s", "train/data_wait_share"]);
    }
}
