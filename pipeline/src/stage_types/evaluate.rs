//! `evaluate`: text-to-video retrieval over caption clips and zero-shot
//! temporal grounding of the projected features of its input, each metric
//! next to its chance level (see `crate::evaluation`).

use crate::engine::{
    BuildContext, BuildError, Built, Checks, DataKind, Inputs, Port, PrepareContext, StageType, Timing,
};
use crate::evaluation::{evaluate, print_table, EvalModel};
use crate::graph::PathResolver;
use crate::stage_types::c3d_encode::{C3dEncode, Encoder};
use locvtp_model::Layer;
use locvtp_narration::grounding::GroundingFormat;
use locvtp_operators::collect::collect_features;
use locvtp_operators::FeatureMsg;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of `evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Evaluate {
    /// Hugging Face folder of the frozen text encoder; defaults to the
    /// packaged all-MiniLM-L6-v2.
    pub text_encoder: Option<PathBuf>,
    /// Folder of narration files (`<id>.vtt` / `.srt`) whose caption clips
    /// are the retrieval queries.
    pub narration: Option<PathBuf>,
    /// Merging of cues into retrieval caption clips: shortest span, seconds.
    pub min_seconds: f64,
    /// Longest retrieval caption clip, seconds.
    pub max_seconds: f64,
    /// Most words in one retrieval caption.
    pub max_words: usize,
    /// Temporal grounding annotations.
    pub grounding: Option<PathBuf>,
    /// Format of the grounding annotations.
    pub grounding_format: GroundingFormat,
    /// Longest candidate window, in clips.
    pub max_window_clips: usize,
    /// Grounding's R@5: the five best candidates after non-maximum
    /// suppression at this IoU (2D-TAN's presets use 0.4 to 0.5).
    pub nms_threshold: f64,
    /// Results (JSON), relative to `run.output_dir`.
    pub output: PathBuf,
}

impl Default for Evaluate {
    fn default() -> Self {
        Evaluate {
            text_encoder: None,
            narration: None,
            min_seconds: 1.0,
            max_seconds: 16.0,
            max_words: 32,
            grounding: None,
            grounding_format: GroundingFormat::CharadesSta,
            max_window_clips: 16,
            nms_threshold: 0.5,
            output: PathBuf::from("evaluation.json"),
        }
    }
}

impl StageType for Evaluate {
    const TYPE: &'static str = "evaluate";
    const ABOUT: &'static str =
        "Scores retrieval and zero-shot grounding on the features of its input, next to chance baselines.";
    const INPUTS: &'static [Port] = &[Port { name: "features", kind: DataKind::Features }];
    const OUTPUT: Option<DataKind> = None;
    const TIMING: Timing = Timing::Gathers;
    type Prepared = EvalModel;

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        paths.input_opt("text_encoder", &mut self.text_encoder);
        paths.input_opt("narration", &mut self.narration);
        paths.input_opt("grounding", &mut self.grounding);
        paths.output(&mut self.output);
    }

    fn validate(&self, checks: &mut Checks) {
        if self.narration.is_none() && self.grounding.is_none() {
            checks.error("narration", "set narration (retrieval), grounding, or both");
        }
        checks.at_least_one("max_window_clips", self.max_window_clips);
        checks.positive("min_seconds", self.min_seconds);
        if !(0.0..=1.0).contains(&self.nms_threshold) {
            checks.error("nms_threshold", format!("{} is not an IoU between 0 and 1", self.nms_threshold));
        }
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        vec![("output", &self.output)]
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<EvalModel> {
        if let Some(dir) = &self.narration {
            if !dir.is_dir() {
                checks.error("narration", format!("{}: not a folder", dir.display()));
            }
        }
        if let Some(file) = &self.grounding {
            if !file.is_file() {
                checks.error("grounding", format!("{}: no such file", file.display()));
            }
        }
        let text_dir = self.text_encoder.clone().or_else(locvtp_model::text::default_text_encoder_dir);
        match &text_dir {
            Some(dir) if !dir.join("config.json").is_file() => checks
                .error("text_encoder", format!("{}: not a Hugging Face model folder (no config.json)", dir.display())),
            None => checks.error(
                "text_encoder",
                "not set, and the packaged all-MiniLM-L6-v2 was not found (run scripts/setup.sh)",
            ),
            _ => {}
        }
        let Some((encode_stage, encode)) = ctx.upstream::<C3dEncode>() else {
            checks.error("inputs", "evaluate must be fed by a c3d_encode stage");
            return None;
        };
        if encode.layer != Layer::Projection {
            checks.error_in(
                &encode_stage.name,
                "layer",
                format!("stages.{} evaluates in the joint space: this layer must be \"projection\"", ctx.stage.name),
            );
        }
        let encoder: &Encoder = ctx.upstream_prepared::<C3dEncode>()?;
        checks.is_empty().then(|| EvalModel {
            model: encoder.model.clone(),
            checkpoint: encode.checkpoint.clone(),
            seed: ctx.graph.run.seed as i64,
            clip_frames: encoder.clip_frames,
            stride: encoder.stride,
            text_encoder: text_dir.expect("checked"),
        })
    }

    fn build<'s>(
        &self,
        model: Arc<EvalModel>,
        ctx: &mut BuildContext<'_, 's>,
        mut inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let features = inputs.take::<FeatureMsg>(0)?;
        let (run, options, stage) = (ctx.run.clone(), self.clone(), ctx.stage.name.clone());
        let errors = collect_features(features, ctx.counts_items(), ctx.run.clone(), move |videos| {
            // Metrics over the videos done before a stop would describe a
            // subset nobody asked for.
            if run.cut_short() || run.failed() {
                return;
            }
            match evaluate(&options, &model, &videos) {
                Ok(result) => {
                    print_table(&result);
                    run.record_output(&stage, options.output.display().to_string());
                }
                Err(e) => run.fail(&stage, format!("{e:#}")),
            }
        });
        ctx.report_errors(errors);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Message;
    use crate::stage_types::testing::{config, run_stage, TestGraph};
    use locvtp_operators::FeatureMsg;
    use std::sync::Arc;
    use timely::dataflow::operators::ToStream;

    #[test]
    fn grounding_queries_are_scored_next_to_the_random_window() {
        let t = TestGraph::new();
        std::fs::write(
            t.path("grounding.txt"),
            "v 0.0 1.0##a red circle\nv 1.0 2.0##a blue square\nmissing 0 1##nothing\n",
        )
        .unwrap();
        let graph = t.graph(&format!(
            "[stages.encode]\ntype = \"c3d_encode\"\ninputs = [\"clips\"]\nmodel = \"{}\"\ndevice = \"cpu\"\n\n\
             [stages.evaluate]\ntype = \"evaluate\"\ninputs = [\"encode\"]\ngrounding = \"{}\"\n",
            config("c3d-tiny.toml").display(),
            t.path("grounding.txt").display()
        ));
        run_stage::<FeatureMsg>(&graph, "evaluate", |scope| {
            // Four 16-frame clips of a 64-frame video at 32 fps; 16-d projections.
            let mut msgs: Vec<FeatureMsg> = (0..4)
                .map(|i| FeatureMsg::Feature {
                    video: Arc::from("v"),
                    index: i,
                    values: (0..16).map(|k| ((i * 16 + k) as f32).sin()).collect(),
                })
                .collect();
            msgs.push(FeatureMsg::End { video: Arc::from("v"), clips: 4, frames: 64, fps: 32.0 });
            vec![FeatureMsg::wrap(msgs.to_stream(scope))]
        });
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.path("out/evaluation.json")).unwrap()).unwrap();
        let g = &result["grounding"];
        assert_eq!(g["queries"], 2, "the annotation of a video without features is left out: {g}");
        for k in ["R@1_IoU0.3", "R@1_IoU0.5", "R@1_IoU0.7", "mIoU"] {
            for values in [g, &g["random"], &g["whole_video"]] {
                let v = values[k].as_f64().unwrap_or_else(|| panic!("{k}: {g}"));
                let [low, high] = [0, 1].map(|b| values["interval"][k][b].as_f64().unwrap());
                assert!((0.0..=1.0).contains(&v) && low <= v && v <= high, "{k}: {g}");
            }
        }
        // The video's 2 s are one window of its candidates: the whole video
        // hits neither half-video truth at IoU 0.7, and covers each half.
        assert_eq!(g["whole_video"]["R@1_IoU0.7"], 0.0);
        assert_eq!(g["whole_video"]["mIoU"], 0.5);
        assert_eq!(result["videos"], 1);
    }
}
