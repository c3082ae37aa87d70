//! The run manifest every training checkpoint carries: everything the steps
//! taken so far depend on, so that a resumed run can tell whether it would
//! continue the same training.
//!
//! It is a flat map from names to values, written as JSON into the
//! checkpoint's metadata (`run_manifest`):
//!
//! * `run.seed`;
//! * every option of the train stage and of each stage upstream of it, as
//!   `stages.<name>.<option>` with its TOML value, less the options that do
//!   not change a step (where files are, devices, checkpoint cadence, decode
//!   threads: see [`NOT_SETTINGS`]);
//! * `model.<key>` for each key of the model config the train stage reads,
//!   and `train.text_encoder`, a hash of the text encoder's files;
//! * `train.micro_batches`, the effective number of micro-batches (one per
//!   worker unless set), which decides the steps;
//! * `graph_hash`, a hash of all of the above, for provenance;
//! * `data.fingerprint`, the hash of every shard's videos and caption clips
//!   and of the shard count, known once the sampler has gathered them.
//!
//! Settings are compared before the run starts; the data fingerprint when
//! the sampler has it. Either mismatch stops the run with exit code 2 and
//! lists what changed, unless `accept_changed_settings` is set on the train
//! stage.

use crate::graph::Graph;
use locvtp_model::ModelConfig;
use locvtp_operators::manifest::{RunManifest, GRAPH_HASH};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Options that do not change what a step computes: paths to the data (its
/// fingerprint covers the data itself) and to the model config (its keys
/// are listed instead), where and how fast it runs, how often it saves, and
/// how many epochs it runs (a longer run resumes a shorter one).
pub const NOT_SETTINGS: &[&str] = &[
    "epochs",
    "dir",
    "file",
    "list",
    "model",
    "text_encoder",
    "init_checkpoint",
    "resume",
    "accept_changed_settings",
    "checkpoint_every_steps",
    "device",
    "text_store",
    "threads",
    "torch_threads",
    "prefetch",
];

/// What the train stage contributes besides the graph's options.
pub struct TrainingSettings<'a> {
    pub model: &'a ModelConfig,
    pub text_encoder: &'a Path,
    pub micro_batches: usize,
}

/// The settings of train stage `train` of `graph` (everything but the
/// data fingerprint).
pub fn training_manifest(graph: &Graph, train: &str, settings: &TrainingSettings<'_>) -> RunManifest {
    let mut entries = BTreeMap::new();
    entries.insert("run.seed".to_string(), graph.run.seed.to_string());
    for name in upstream_closure(graph, train) {
        let Some(stage) = graph.stage(&name) else { continue };
        let mut options = stage.options.to_toml().unwrap_or_default();
        options.retain(|k, _| !NOT_SETTINGS.contains(&k));
        entries.insert(format!("stages.{name}.type"), stage.entry().name.to_string());
        flatten(&format!("stages.{name}"), &toml::Value::Table(options), &mut entries);
    }
    if let Ok(toml::Value::Table(model)) = toml::Value::try_from(settings.model) {
        flatten("model", &toml::Value::Table(model), &mut entries);
    }
    entries.insert("train.text_encoder".to_string(), text_encoder_hash(settings.text_encoder));
    entries.insert("train.micro_batches".to_string(), settings.micro_batches.to_string());
    let hash = Sha256::digest(serde_json::to_vec(&entries).expect("strings serialise"));
    entries.insert(GRAPH_HASH.to_string(), hex(&hash[..8]));
    RunManifest { entries }
}

/// `train` and every stage it reads from, directly or not, sorted.
fn upstream_closure(graph: &Graph, train: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([train.to_string()]);
    while let Some(name) = queue.pop_front() {
        if let Some(stage) = graph.stage(&name) {
            if seen.insert(name) {
                queue.extend(stage.inputs.iter().cloned());
            }
        }
    }
    seen
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v.to_string());
        }
    }
}

/// A hash of the encoder's configuration and of its weights' size: a
/// different model changes it, a moved folder does not. Reading 90 MB of
/// weights for every start would cost more than it tells.
fn text_encoder_hash(dir: &Path) -> String {
    let mut h = Sha256::new();
    for name in ["config.json", "tokenizer.json", "vocab.txt"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            h.update(name.as_bytes());
            h.update(Sha256::digest(&bytes));
        }
    }
    if let Ok(m) = std::fs::metadata(dir.join("model.safetensors")) {
        h.update(m.len().to_le_bytes());
    }
    hex(&h.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage_types::testing::{config, TestGraph};

    fn manifest_of(t: &TestGraph, sampler: &str, train: &str) -> RunManifest {
        let graph = t.graph(&format!(
            "[stages.captions]\ntype = \"align\"\ninputs = [\"narration\", \"meta\"]\n\n\
             [stages.videos]\ntype = \"video_files\"\ndir = \"{dir}\"\n\n\
             [stages.narration]\ntype = \"narration\"\ninputs = [\"videos\"]\ndir = \"{dir}\"\n\n\
             [stages.meta]\ntype = \"probe\"\ninputs = [\"videos\"]\n\n\
             [stages.samples]\ntype = \"segment_sampler\"\ninputs = [\"captions\"]\n{sampler}\n\n\
             [stages.train]\ntype = \"train\"\ninputs = [\"samples\"]\nmodel = \"{model}\"\n{train}\n\n\
             [stages.metrics]\ntype = \"metrics\"\ninputs = [\"train\"]\n",
            dir = t.path("").display(),
            model = config("c3d-tiny.toml").display(),
        ));
        let model = ModelConfig::from_toml_file(&config("c3d-tiny.toml")).unwrap();
        let settings = TrainingSettings { model: &model, text_encoder: &t.path("encoder"), micro_batches: 2 };
        training_manifest(&graph, "train", &settings)
    }

    #[test]
    fn settings_that_change_the_steps_change_the_manifest_and_the_others_do_not() {
        let t = TestGraph::new();
        let base = manifest_of(&t, "shards = 4", "lr = 0.002");
        for key in [
            "run.seed",
            "stages.train.lr",
            "stages.samples.shards",
            "stages.captions.min_seconds",
            "model.num_segments",
        ] {
            assert!(base.entries.contains_key(key), "{key} missing from {:?}", base.entries.keys());
        }
        assert!(!base.entries.keys().any(|k| k.starts_with("stages.metrics")), "a sink is not a setting");
        assert!(!base.entries.keys().any(|k| k.ends_with(".dir") || k.ends_with(".threads")));

        let faster =
            manifest_of(&t, "shards = 4\nthreads = 7", "lr = 0.002\ndevice = \"cpu\"\ncheckpoint_every_steps = 5");
        assert_eq!(faster, base, "threads, device and checkpoint cadence do not change a step");

        let other = manifest_of(&t, "shards = 8", "lr = 0.001");
        assert_eq!(
            other.setting_differences(&base),
            vec!["stages.samples.shards: 4 -> 8".to_string(), "stages.train.lr: 0.002 -> 0.001".to_string()]
        );
        assert_ne!(other.entries[GRAPH_HASH], base.entries[GRAPH_HASH]);
    }
}
