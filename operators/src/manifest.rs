//! The run manifest every training checkpoint carries: a flat map from
//! names to values of everything the steps taken so far depend on (the
//! graph's settings and the data's fingerprint), so that a resumed run can
//! tell whether it would continue the same training. The graph side is
//! built by the pipeline; the trainer adds the data fingerprint and writes
//! the manifest into every checkpoint under [`RUN_MANIFEST_KEY`].

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The checkpoint metadata key the manifest is stored under.
pub const RUN_MANIFEST_KEY: &str = "run_manifest";
/// The manifest entry of the data fingerprint.
pub const DATA_FINGERPRINT: &str = "data.fingerprint";
/// The manifest entry hashing every setting.
pub const GRAPH_HASH: &str = "graph_hash";

/// What a training run's steps depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunManifest {
    pub entries: BTreeMap<String, String>,
}

impl RunManifest {
    /// The manifest stored in a checkpoint's metadata; `None` for a
    /// checkpoint written without one.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Option<RunManifest>> {
        metadata
            .get(RUN_MANIFEST_KEY)
            .map(|json| serde_json::from_str(json).context("the run manifest is not valid JSON"))
            .transpose()
    }

    /// The manifest of checkpoint `path`, if it has one.
    pub fn read(path: &Path) -> Result<Option<RunManifest>> {
        let metadata = locvtp_model::checkpoint::read_safetensors_metadata(path)?;
        Self::from_metadata(&metadata).with_context(|| path.display().to_string())
    }

    /// The manifest with the data fingerprint, as checkpoints store it.
    pub fn with_data(&self, fingerprint: Option<String>) -> RunManifest {
        let mut m = self.clone();
        if let Some(f) = fingerprint {
            m.entries.insert(DATA_FINGERPRINT.to_string(), f);
        }
        m
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a manifest serialises")
    }

    pub fn data_fingerprint(&self) -> Option<&str> {
        self.entries.get(DATA_FINGERPRINT).map(String::as_str)
    }

    /// The settings that differ from those of `checkpoint`, one line each
    /// (`name: <checkpoint's value> -> <this run's>`); the derived graph
    /// hash and the data fingerprint (compared once known) are left out.
    pub fn setting_differences(&self, checkpoint: &RunManifest) -> Vec<String> {
        let keys: BTreeSet<&String> = self.entries.keys().chain(checkpoint.entries.keys()).collect();
        keys.into_iter()
            .filter(|k| *k != GRAPH_HASH && *k != DATA_FINGERPRINT)
            .filter_map(|k| {
                let (was, now) = (checkpoint.entries.get(k), self.entries.get(k));
                (was != now).then(|| {
                    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".to_string());
                    format!("{k}: {} -> {}", show(was), show(now))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(pairs: &[(&str, &str)]) -> RunManifest {
        RunManifest { entries: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn differences_name_each_changed_added_and_removed_setting() {
        let then = manifest(&[
            ("stages.train.lr", "0.002"),
            ("stages.samples.shards", "4"),
            ("stages.train.tau", "1.0"),
            (GRAPH_HASH, "aa"),
            (DATA_FINGERPRINT, "01"),
        ]);
        let now = manifest(&[
            ("stages.train.lr", "0.001"),
            ("stages.samples.shards", "4"),
            ("stages.samples.window", "16"),
            (GRAPH_HASH, "bb"),
            (DATA_FINGERPRINT, "02"),
        ]);
        assert_eq!(
            now.setting_differences(&then),
            vec![
                "stages.samples.window: (unset) -> 16".to_string(),
                "stages.train.lr: 0.002 -> 0.001".to_string(),
                "stages.train.tau: 1.0 -> (unset)".to_string(),
            ]
        );
        assert!(then.setting_differences(&then).is_empty());
    }

    #[test]
    fn the_manifest_round_trips_through_checkpoint_metadata() {
        let m = manifest(&[("run.seed", "0"), (DATA_FINGERPRINT, "0123456789abcdef")]);
        let metadata = BTreeMap::from([(RUN_MANIFEST_KEY.to_string(), m.to_json())]);
        let back = RunManifest::from_metadata(&metadata).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(back.data_fingerprint(), Some("0123456789abcdef"));
        assert!(RunManifest::from_metadata(&BTreeMap::new()).unwrap().is_none());
        let broken = BTreeMap::from([(RUN_MANIFEST_KEY.to_string(), "{".to_string())]);
        assert!(RunManifest::from_metadata(&broken).is_err());
    }
}
