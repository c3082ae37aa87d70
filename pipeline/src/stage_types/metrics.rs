//! `metrics`: one JSON line per training step (every loss term, the
//! learning rate, samples/s, the data-wait share) in `metrics.jsonl`, and
//! the loss curve redrawn at every epoch end.

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { path: PathBuf::from("metrics.jsonl"), plot: PathBuf::from("loss.png") }
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
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("path", &self.path), ("plot", &self.plot)]
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
                        run.record_output(&stage, serde_json::json!({ "path": path.display().to_string(), "plot": plot.display().to_string() }));
                    }
                    if let Err(e) = append_line(&path, &metrics_line(&report)) {
                        run.fail(&stage, format!("{}: {e}", path.display()));
                    }
                    tracing::info!(
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
            samples_per_s: 1.0,
            data_wait_share: 0.0,
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
    }
}
