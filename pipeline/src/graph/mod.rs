//! Graph files: the schema of `graphs/*.toml`, `--set` overrides, and
//! validation of the whole graph before any work starts.
//!
//! A graph file has a `[run]` table ([`RunOptions`]) and one
//! `[stages.<name>]` table per stage, each with a `type` (a registered
//! stage type, see `crate::stage_types`), `inputs = ["other", ...]` for all
//! but sources, and the type's options. [`load`] reads, overrides and
//! validates a file and returns either a [`Graph`] whose stages are in
//! topological order or a [`GraphError`] listing every problem found, each
//! with file, line and key.

mod build;
mod describe;
mod deser;
mod error;
mod options;
mod parse_options;
mod paths;
mod source;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::{DataKind, DynStage, StageEntry};
pub use error::{GraphError, Location, Problem};
pub use options::RunOptions;
pub(crate) use parse_options::{parse_options, Parsed};
pub use paths::PathResolver;
pub(crate) use source::Document;

/// A validated graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The graph file, as it was named on the command line.
    pub file: PathBuf,
    pub run: RunOptions,
    /// Every stage, sources first: each stage comes after all its inputs.
    pub stages: Vec<Stage>,
    /// The file as read, with the origin of every key, for locating
    /// problems found after loading.
    pub(crate) doc: Arc<Document>,
}

/// One stage of a validated graph. Relative paths in its options have been
/// made absolute.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub options: Box<dyn DynStage>,
    /// Names of the stages feeding this one, in the order of its type's
    /// input ports.
    pub inputs: Vec<String>,
    /// Option keys whose values differ from the type's defaults (required
    /// keys included), in declaration order; for listings.
    pub non_default: Vec<String>,
}

impl PartialEq for Stage {
    fn eq(&self, other: &Stage) -> bool {
        self.name == other.name
            && self.inputs == other.inputs
            && self.non_default == other.non_default
            && self.options.eq_dyn(other.options.as_ref())
    }
}

impl Stage {
    /// The registry entry of this stage's type.
    pub fn entry(&self) -> &'static StageEntry {
        self.options.entry()
    }

    /// What the stage emits; `None` for sinks.
    pub fn output(&self) -> Option<DataKind> {
        self.entry().output
    }
}

impl Graph {
    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stages that take `name` as an input.
    pub fn consumers(&self, name: &str) -> Vec<&Stage> {
        self.stages.iter().filter(|s| s.inputs.iter().any(|i| i == name)).collect()
    }

    /// A human-readable listing of the topology for `locvtp-flow check`.
    pub fn describe(&self) -> String {
        describe::describe(self)
    }

    /// A problem about the key at `path` (e.g. `["stages", "encode",
    /// "model"]`), located at its line or `--set` argument.
    pub fn problem(&self, path: &[String], message: impl Into<String>) -> Problem {
        self.doc.problem(path, message)
    }

    /// A short name for the kind of run: the types of its sinks.
    pub fn topology(&self) -> String {
        let mut sinks: Vec<&str> =
            self.stages.iter().filter(|s| s.output().is_none()).map(|s| s.entry().name).collect();
        sinks.sort_unstable();
        sinks.dedup();
        sinks.join("+")
    }
}

/// Reads the graph file at `file`, applies `--set` overrides (`KEY=VALUE`
/// strings) and validates the result. Relative paths from the file are
/// resolved against the file's folder, those from overrides against the
/// working directory.
pub fn load<S: AsRef<str>>(file: &Path, overrides: &[S]) -> Result<Graph, GraphError> {
    let whole_file = |message: String| {
        GraphError::new(vec![Problem {
            location: Location::File { path: file.to_path_buf(), line: None },
            key: String::new(),
            message,
        }])
    };
    let text = std::fs::read_to_string(file).map_err(|e| whole_file(format!("cannot read the graph file: {e}")))?;
    let cwd = std::env::current_dir().map_err(|e| whole_file(format!("cannot read the working directory: {e}")))?;
    parse_str(&text, file, overrides, &cwd)
}

/// Like [`load`], for graph text already in memory: `file` names it in
/// messages and, taken relative to `cwd`, gives the folder its relative
/// paths are resolved against; `cwd` also resolves override paths.
pub fn parse_str<S: AsRef<str>>(text: &str, file: &Path, overrides: &[S], cwd: &Path) -> Result<Graph, GraphError> {
    let dir = cwd.join(file.parent().unwrap_or(Path::new("")));
    // A canonical folder lets `../x` in the file be shown as a clean path
    // (see `paths::join_clean`).
    let graph_dir = dir.canonicalize().unwrap_or(dir);
    build::build(text, file, &graph_dir, cwd, overrides, build::Strictness::Whole)
}

/// Like [`parse_str`], checking each stage's options but not how the stages
/// connect: for tests that drive one stage on inputs they make themselves.
#[cfg(test)]
pub(crate) fn parse_stages(text: &str, file: &Path, cwd: &Path) -> Result<Graph, GraphError> {
    build::build::<&str>(text, file, cwd, cwd, &[], build::Strictness::StagesOnly)
}

/// A graph made in code: typed stage options instead of TOML text, checked
/// exactly as a graph file is.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    run: RunOptions,
    stages: toml::Table,
}

impl GraphBuilder {
    pub fn new(run: RunOptions) -> GraphBuilder {
        GraphBuilder { run, stages: toml::Table::new() }
    }

    /// Adds stage `name` of `options`' type, fed by `inputs`.
    pub fn stage<T: crate::engine::StageType>(mut self, name: &str, options: &T, inputs: &[&str]) -> GraphBuilder {
        let mut table = toml::Table::try_from(options).expect("stage options serialize to a TOML table");
        table.insert("type".into(), T::TYPE.into());
        if !inputs.is_empty() {
            table.insert("inputs".into(), toml::Value::Array(inputs.iter().map(|i| (*i).into()).collect()));
        }
        self.stages.insert(name.to_string(), toml::Value::Table(table));
        self
    }

    /// The validated graph; `name` stands for the file in messages, and
    /// relative paths are taken from the working directory.
    pub fn build(self, name: &Path) -> Result<Graph, GraphError> {
        let mut root = toml::Table::new();
        root.insert("run".into(), toml::Value::try_from(&self.run).expect("run options serialize"));
        root.insert("stages".into(), toml::Value::Table(self.stages));
        let text = toml::to_string(&root).expect("a TOML table prints");
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        parse_str::<&str>(&text, name, &[], &cwd)
    }
}

/// The keys of a serde + schemars type, in declaration order.
pub(crate) fn schema_keys<T: schemars::JsonSchema>() -> Vec<String> {
    let schema = crate::engine::schema_of::<T>();
    schema.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().cloned().collect()).unwrap_or_default()
}
