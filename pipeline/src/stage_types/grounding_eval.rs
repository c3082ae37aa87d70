//! `grounding_eval`: the test-split results of a grounding trainer, each
//! metric (R@1 and R@5 at the dataset's IoU thresholds, mean IoU of the
//! top moment) next to the three trivial baselines (a random candidate,
//! the whole video, the best fixed window learned from the training
//! annotations), with the query count and a 95% interval for every number,
//! and the validation curve the epoch was chosen on. Written as JSON and
//! printed as a table.

use crate::engine::{BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType};
use crate::graph::PathResolver;
use locvtp_model::moments::{
    best_fixed_windows, score, whole_video, Estimate, FixedMethod, Method, Moment, Predictions, RandomWindow, Ranked,
    INTERVAL_METHOD,
};
use locvtp_operators::grounding::{curve_point, GroundingEvent, GroundingSetup, RankedQuery, RECALLS};
use locvtp_operators::train::TrainEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Options of `grounding_eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct GroundingEval {
    /// Results (JSON), relative to `run.output_dir`.
    pub output: PathBuf,
    /// Also write every test query's ranked moments into the results.
    pub predictions: bool,
}

impl Default for GroundingEval {
    fn default() -> Self {
        GroundingEval { output: PathBuf::from("grounding.json"), predictions: true }
    }
}

fn estimate_json(e: Estimate) -> serde_json::Value {
    json!({ "value": e.value, "low": e.low, "high": e.high })
}

/// The results of the test split, with the baselines and the validation
/// curve, as written to the output file.
pub fn report(
    setup: &GroundingSetup,
    curve: &[serde_json::Value],
    epoch: u32,
    test: &[RankedQuery],
    seed: u64,
    with_predictions: bool,
) -> serde_json::Value {
    let thresholds = &setup.model.thresholds;
    let ranked: Vec<Ranked> = test.iter().map(|q| q.ranked.clone()).collect();
    let n = ranked.len();
    let candidates: Vec<Vec<Moment>> = ranked.iter().map(|r| setup.model.candidates(r.duration)).collect();
    let random =
        RandomWindow { queries: candidates.iter().zip(&ranked).map(|(c, r)| (c.as_slice(), r.truth)).collect() };
    let truths: Vec<(Moment, f64)> = ranked.iter().map(|r| (r.truth, r.duration)).collect();
    let whole = whole_video(&RECALLS, thresholds);
    let fixed = best_fixed_windows(&setup.train_truths, &RECALLS, thresholds);
    let methods: [(&str, &dyn Method); 4] = [
        ("model", &Predictions(&ranked)),
        ("random_window", &random),
        ("whole_video", &FixedMethod { queries: &truths, windows: &whole }),
        ("best_fixed_window", &FixedMethod { queries: &truths, windows: &fixed }),
    ];
    let mut metrics = serde_json::Map::new();
    for (name, method) in methods {
        for (key, e) in score(method, n, &RECALLS, thresholds, seed) {
            let entry = metrics.entry(key).or_insert_with(|| json!({}));
            entry[name] = estimate_json(e);
        }
    }
    let mut out = json!({
        "model": setup.model,
        "queries": setup.queries,
        "videos": setup.videos,
        "threads": setup.threads,
        "selection": {
            "on": format!("val {}", setup.select_on),
            "epoch": epoch,
            "rule": if setup.queries.get("val").copied().unwrap_or(0) == 0 { "no validation split: the last epoch" } else { "best validation value; ties keep the earlier epoch" },
            "curve": curve,
        },
        "test": {
            "queries": n,
            "intervals": INTERVAL_METHOD,
            "metrics": metrics,
            "baselines": {
                "random_window": "a candidate of the model's own set drawn uniformly (R@5: five distinct ones), as its exact expectation",
                "whole_video": "[0, duration] for every query",
                "best_fixed_window": {
                    "about": "the (start, end) fractions of the video with the most hits on the training annotations (R@5: five windows chosen greedily), applied to every test video",
                    "learned_from_queries": fixed.learned_from,
                    "windows": fixed.for_recall.iter().map(|(k, w)| (k.clone(), json!(w))).collect::<serde_json::Map<_, _>>(),
                    "mIoU_window": fixed.for_miou,
                },
            },
        },
    });
    if with_predictions {
        out["test"]["predictions"] = json!(test);
    }
    out
}

/// The results as a table for the terminal.
pub fn print_table(r: &serde_json::Value) {
    let test = &r["test"];
    let f = |v: &serde_json::Value| match (v["value"].as_f64(), v["low"].as_f64(), v["high"].as_f64()) {
        (Some(x), Some(l), Some(h)) => format!("{x:.3} [{l:.3}, {h:.3}]"),
        _ => "-".into(),
    };
    eprintln!(
        "temporal grounding, test split: {} queries, epoch {} chosen on {} (95% intervals)",
        test["queries"],
        r["selection"]["epoch"],
        r["selection"]["on"].as_str().unwrap_or("?")
    );
    eprintln!(
        "  {:<12} {:>22} {:>22} {:>22} {:>22}",
        "metric", "model", "random window", "whole video", "best fixed window"
    );
    if let Some(metrics) = test["metrics"].as_object() {
        for (k, m) in metrics {
            eprintln!(
                "  {k:<12} {:>22} {:>22} {:>22} {:>22}",
                f(&m["model"]),
                f(&m["random_window"]),
                f(&m["whole_video"]),
                f(&m["best_fixed_window"])
            );
        }
    }
}

impl StageType for GroundingEval {
    const TYPE: &'static str = "grounding_eval";
    const ABOUT: &'static str =
        "Scores a grounding trainer's test predictions next to three baselines, with 95% intervals, as JSON.";
    const INPUTS: &'static [Port] = &[Port { name: "training", kind: DataKind::Training }];
    const OUTPUT: Option<DataKind> = None;
    type Prepared = ();

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.output(&mut self.output);
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("output", &self.output)]
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<()> {
        if ctx.input_options::<crate::stage_types::train_grounding::TrainGrounding>(0).is_none() {
            checks.error("inputs", "grounding_eval must be fed by a train_grounding stage");
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
        let (options, run, stage, seed) = (self.clone(), ctx.run.clone(), ctx.stage.name.clone(), ctx.graph.run.seed);
        let mut setup: Option<GroundingSetup> = None;
        let mut curve = Vec::new();
        events.sink(Pipeline, "GroundingEval", move |(input, _frontier)| {
            input.for_each(|_cap, data| {
                for event in data.drain(..) {
                    let TrainEvent::Grounding(event) = event else { continue };
                    match (&*event, &setup) {
                        (GroundingEvent::Setup(s), _) => {
                            curve = s.earlier_curve.clone();
                            setup = Some(GroundingSetup::clone(s));
                        }
                        (GroundingEvent::Validation { epoch, queries }, Some(s)) => {
                            curve.push(curve_point(*epoch, queries, &s.model.thresholds));
                        }
                        (GroundingEvent::Test { epoch, queries }, Some(s)) => {
                            let result = report(s, &curve, *epoch, queries, seed, options.predictions);
                            let mut bytes = serde_json::to_vec_pretty(&result).expect("plain data");
                            bytes.push(b'\n');
                            match locvtp_model::checkpoint::atomic_write(&options.output, &bytes) {
                                Ok(()) => {
                                    print_table(&result);
                                    run.record_output(&stage, options.output.display().to_string());
                                }
                                Err(e) => run.fail(&stage, format!("{e:#}")),
                            }
                        }
                        (_, None) => run.fail(&stage, "ranked queries arrived before the trainer's setup"),
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
    use locvtp_model::tan::TanPreset;
    use std::collections::BTreeMap;

    fn query(truth: Moment, moments: Vec<Moment>) -> RankedQuery {
        RankedQuery { video_id: "v".into(), sentence: "s".into(), ranked: Ranked { truth, duration: 10.0, moments } }
    }

    #[test]
    fn every_metric_sits_next_to_three_baselines_with_intervals() {
        let setup = GroundingSetup {
            model: TanPreset::CharadesSta.config(8, 4),
            queries: BTreeMap::from([("test".to_string(), 4)]),
            videos: BTreeMap::new(),
            // Training truths all in the first fifth of their videos.
            train_truths: vec![(0.0, 0.2); 10],
            select_on: "R@1_IoU0.5".into(),
            threads: 1,
            earlier_curve: Vec::new(),
        };
        let test = vec![
            query((0.0, 2.0), vec![(0.0, 2.0), (5.0, 10.0)]),
            query((0.0, 2.5), vec![(5.0, 10.0), (0.0, 2.5)]),
            query((6.0, 10.0), vec![(6.0, 10.0)]),
            query((3.0, 4.0), vec![(0.0, 10.0)]),
        ];
        let r = report(&setup, &[], 3, &test, 0, true);
        let m = &r["test"]["metrics"];
        for key in ["R@1_IoU0.3", "R@1_IoU0.5", "R@1_IoU0.7", "R@5_IoU0.3", "R@5_IoU0.5", "R@5_IoU0.7", "mIoU"] {
            for method in ["model", "random_window", "whole_video", "best_fixed_window"] {
                let e = &m[key][method];
                let (v, lo, hi) =
                    (e["value"].as_f64().unwrap(), e["low"].as_f64().unwrap(), e["high"].as_f64().unwrap());
                assert!(lo <= v && v <= hi && (0.0..=1.0).contains(&v), "{key} {method}: {e}");
            }
        }
        assert_eq!(m["R@1_IoU0.5"]["model"]["value"], 0.5);
        assert_eq!(m["R@5_IoU0.5"]["model"]["value"], 0.75);
        // The whole video hits only the query covering 40% of it at IoU 0.3.
        assert_eq!(m["R@1_IoU0.3"]["whole_video"]["value"], 0.25);
        // The learned window [0, 0.2] finds the first two queries.
        assert_eq!(m["R@1_IoU0.7"]["best_fixed_window"]["value"], 0.5);
        assert_eq!(r["test"]["queries"], 4);
        assert_eq!(r["selection"]["epoch"], 3);
        assert_eq!(r["test"]["predictions"].as_array().unwrap().len(), 4);
    }
}
