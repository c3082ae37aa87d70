//! The graph engine. Every stage type implements [`StageType`]: its
//! options, ports, checks, and `build`, which turns the built streams of
//! its inputs into its own. [`prepare`] runs every check a run needs (and
//! is all `check` does); [`build`] walks a validated graph in topological
//! order and calls each stage's `build`; it never looks at stage types.

mod build;
mod kinds;
mod prepare;

#[cfg(test)]
pub(crate) use build::build_stage;
pub use build::{build, BuildContext, BuildError, Built, Inputs};
pub use kinds::{AnyStream, DataKind, Message};
pub use prepare::{prepare, ClusterShape, Mode, PrepareContext, Prepared, PreparedGraph};

use crate::graph::{Document, Graph, Parsed, PathResolver, Problem, Stage};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

/// One input port of a stage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// Short name, for messages and `check` listings.
    pub name: &'static str,
    pub kind: DataKind,
}

/// How a stage's output times relate to its inputs'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Item by item, at the items' own times: a video's results leave at
    /// the video's time.
    PerItem,
    /// Needs the whole input before it emits, on a timeline of its own
    /// (training steps after the caption clips): it ends the flows of its
    /// inputs and starts one.
    Gathers,
}

/// Problems an options type finds, each about one of its keys (or another
/// stage's key, for checks across stages).
#[derive(Debug, Default)]
pub struct Checks {
    /// `(stage, key, message)`; stage `None` means the stage being checked,
    /// key `""` the stage as a whole.
    problems: Vec<(Option<String>, String, String)>,
}

impl Checks {
    /// Reports `message` about this stage's option `key` (`""` for the
    /// stage as a whole).
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push((None, key.to_string(), message.into()));
    }

    /// Reports a problem with option `key` of another stage.
    pub fn error_in(&mut self, stage: &str, key: &str, message: impl Into<String>) {
        self.problems.push((Some(stage.to_string()), key.to_string(), message.into()));
    }

    /// Reports an error chain about `key`, as one line.
    pub fn fail(&mut self, key: &str, error: &anyhow::Error) {
        self.error(key, format!("{error:#}"));
    }

    /// Requires an integer option to be at least 1.
    pub fn at_least_one(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.error(key, "must be at least 1");
        }
    }

    /// Requires a float option to be finite and greater than zero.
    pub fn positive(&mut self, key: &str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.error(key, format!("must be a finite number > 0, got {value}"));
        }
    }

    /// Requires a float option to be finite and not negative.
    pub fn non_negative(&mut self, key: &str, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.error(key, format!("must be a finite number >= 0, got {value}"));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// `(other stage, key, message)` of every problem.
    pub(crate) fn into_parts(self) -> Vec<(Option<String>, String, String)> {
        self.problems
    }

    /// The problems as located [`Problem`]s for `stage` of `graph`.
    pub(crate) fn into_problems(self, graph: &Graph, stage: Option<&str>) -> Vec<Problem> {
        self.problems
            .into_iter()
            .map(|(other, key, message)| {
                let mut path = match other.as_deref().or(stage) {
                    Some(name) => vec!["stages".to_string(), name.to_string()],
                    None => vec!["run".to_string()],
                };
                if !key.is_empty() {
                    path.extend(key.split('.').map(String::from));
                }
                graph.problem(&path, message)
            })
            .collect()
    }
}

/// A stage type: its options struct implements this (one file per type
/// under `stage_types/`, one line in its registry).
///
/// The options derive `Deserialize` with defaults for every optional key
/// (unknown keys are rejected against the JSON schema's keys), `Serialize`
/// (to tell which options differ from their defaults) and `JsonSchema`
/// (whose doc comments `locvtp-flow stages` prints).
pub trait StageType:
    Serialize + DeserializeOwned + JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The `type = "..."` name.
    const TYPE: &'static str;
    /// What the stage does, in one sentence.
    const ABOUT: &'static str;
    /// Input ports in the order `inputs = [...]` lists them; empty for
    /// sources.
    const INPUTS: &'static [Port];
    /// What the stage emits; `None` for sinks.
    const OUTPUT: Option<DataKind>;
    const TIMING: Timing = Timing::PerItem;

    /// What [`StageType::prepare`] hands to [`StageType::build`]; shared by
    /// the workers of a process.
    type Prepared: Send + Sync + 'static;

    /// Makes relative paths absolute (see [`PathResolver`]).
    fn resolve_paths(&mut self, _paths: &PathResolver<'_>) {}

    /// Checks values serde cannot (ranges, combinations of keys).
    fn validate(&self, _checks: &mut Checks) {}

    /// Files this stage writes, by option key, so that two stages never
    /// write the same one.
    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        Vec::new()
    }

    /// For sinks that keep their results across runs: the items (video
    /// ids) already finished by an earlier run of the same command, which
    /// sources then skip. `None`: the sink needs every item every run.
    fn finished_items(&self) -> anyhow::Result<Option<BTreeSet<String>>> {
        Ok(None)
    }

    /// Checks against the rest of the graph and the disk (model configs,
    /// checkpoints, folders), and loads what the stage needs. `check` runs
    /// it too, so a graph `check` accepts starts. `None` when `checks` got
    /// a problem.
    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Self::Prepared>;

    /// Builds the stage's operators on the built streams of its inputs
    /// (in port order) and returns its output stream (`None` for sinks).
    fn build<'s>(
        &self,
        prepared: Arc<Self::Prepared>,
        ctx: &mut BuildContext<'_, 's>,
        inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError>;
}

/// A stage's options behind a trait object: what a [`Stage`] holds.
pub trait DynStage: Debug + Send + Sync {
    fn entry(&self) -> &'static StageEntry;
    fn as_any(&self) -> &dyn Any;
    fn clone_box(&self) -> Box<dyn DynStage>;
    fn eq_dyn(&self, other: &dyn DynStage) -> bool;
    fn resolve_paths(&mut self, paths: &PathResolver<'_>);
    fn validate(&self, checks: &mut Checks);
    fn outputs(&self) -> Vec<(&'static str, &Path)>;
    fn finished_items(&self) -> anyhow::Result<Option<BTreeSet<String>>>;
    /// The options as a TOML table, for listings.
    fn to_toml(&self) -> Option<toml::Table>;
    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Prepared>;
    fn build<'s>(
        &self,
        prepared: &Prepared,
        ctx: &mut BuildContext<'_, 's>,
        inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError>;
}

impl<T: StageType> DynStage for T {
    fn entry(&self) -> &'static StageEntry {
        StageEntry::lookup(T::TYPE).expect("every stage type in use is registered")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn clone_box(&self) -> Box<dyn DynStage> {
        Box::new(self.clone())
    }

    fn eq_dyn(&self, other: &dyn DynStage) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn resolve_paths(&mut self, paths: &PathResolver<'_>) {
        StageType::resolve_paths(self, paths)
    }

    fn validate(&self, checks: &mut Checks) {
        StageType::validate(self, checks)
    }

    fn outputs(&self) -> Vec<(&'static str, &Path)> {
        StageType::outputs(self)
    }

    fn finished_items(&self) -> anyhow::Result<Option<BTreeSet<String>>> {
        StageType::finished_items(self)
    }

    fn to_toml(&self) -> Option<toml::Table> {
        toml::Table::try_from(self).ok()
    }

    fn prepare(&self, ctx: &PrepareContext<'_>, checks: &mut Checks) -> Option<Prepared> {
        StageType::prepare(self, ctx, checks).map(|p| std::sync::Arc::new(p) as Prepared)
    }

    fn build<'s>(
        &self,
        prepared: &Prepared,
        ctx: &mut BuildContext<'_, 's>,
        inputs: Inputs<'s>,
    ) -> Result<Built<'s>, BuildError> {
        let prepared = prepared.clone().downcast::<T::Prepared>().map_err(|_| BuildError {
            stage: ctx.stage.name.clone(),
            message: "prepared for another stage type".into(),
        })?;
        StageType::build(self, prepared, ctx, inputs)
    }
}

impl Clone for Box<dyn DynStage> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A registered stage type.
pub struct StageEntry {
    pub name: &'static str,
    pub about: &'static str,
    pub inputs: &'static [Port],
    pub output: Option<DataKind>,
    pub timing: Timing,
    /// Deserializes the options table (without `type` and `inputs`),
    /// reporting every problem with its key.
    pub(crate) parse: fn(toml::Table, &[String], &Document, &mut Vec<Problem>) -> Option<Parsed>,
    /// The options' JSON schema (keys, defaults, doc comments).
    pub schema: fn() -> schemars::Schema,
}

impl Debug for StageEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageEntry").field("name", &self.name).finish()
    }
}

impl StageEntry {
    pub const fn of<T: StageType>() -> StageEntry {
        StageEntry {
            name: T::TYPE,
            about: T::ABOUT,
            inputs: T::INPUTS,
            output: T::OUTPUT,
            timing: T::TIMING,
            parse: crate::graph::parse_options::<T>,
            schema: schema_of::<T>,
        }
    }

    /// The registered type called `name`.
    pub fn lookup(name: &str) -> Option<&'static StageEntry> {
        crate::stage_types::STAGE_TYPES.iter().find(|t| t.name == name)
    }

    /// Every registered type, in registry order.
    pub fn all() -> &'static [StageEntry] {
        crate::stage_types::STAGE_TYPES
    }

    /// Takes no inputs.
    pub fn is_source(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Emits nothing.
    pub fn is_sink(&self) -> bool {
        self.output.is_none()
    }

    /// The option keys, in declaration order (flattened domain types
    /// included).
    pub fn keys(&self) -> Vec<String> {
        let schema = (self.schema)();
        schema.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    /// The doc comment of option `key`.
    pub fn doc(&self, key: &str) -> Option<String> {
        let schema = (self.schema)();
        let text = schema.get("properties")?.get(key)?.get("description")?.as_str()?;
        Some(text.split("\n\n").next().unwrap_or(text).replace('\n', " "))
    }
}

pub(crate) fn schema_of<T: JsonSchema>() -> schemars::Schema {
    let mut settings = schemars::generate::SchemaSettings::default();
    // Flattened and nested types inline, so `properties` lists every key.
    settings.inline_subschemas = true;
    settings.into_generator().into_root_schema_for::<T>()
}

impl Stage {
    /// This stage's options as type `T`, if it is one.
    pub fn options<T: StageType>(&self) -> Option<&T> {
        self.options.as_any().downcast_ref::<T>()
    }
}

/// A stage type as `locvtp-flow stages` lists it: what it does, its ports,
/// and each option with its default and meaning.
pub fn describe_type(entry: &StageEntry) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let inputs: Vec<String> = entry.inputs.iter().map(|p| format!("{} ({})", p.name, p.kind)).collect();
    let output = entry.output.map_or_else(|| "sink".to_string(), |k| k.to_string());
    let _ = writeln!(out, "{}: {}", entry.name, entry.about);
    let _ = writeln!(
        out,
        "  inputs: {}; output: {output}",
        if inputs.is_empty() { "none (a source)".to_string() } else { inputs.join(", ") }
    );
    let schema = (entry.schema)();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for key in entry.keys() {
        let property = schema.get("properties").and_then(|p| p.get(&key));
        let default = match property.and_then(|p| p.get("default")) {
            Some(v) => format!(" = {v}"),
            None if required.contains(&key.as_str()) => " (required)".to_string(),
            None => String::new(),
        };
        let _ = writeln!(out, "    {key}{default}");
        if let Some(doc) = entry.doc(&key) {
            let _ = writeln!(out, "        {doc}");
        }
    }
    out
}
