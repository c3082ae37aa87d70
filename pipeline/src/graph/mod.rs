//! Graph files: the schema of `graphs/*.toml`, `--set` overrides, and
//! validation of the whole graph before any work starts.
//!
//! A graph file has a `[run]` table ([`RunOptions`]) and one
//! `[stages.<name>]` table per stage, each with a `type` (a registered
//! [`StageType`]), `inputs = ["other", ...]` for all but sources, and the
//! type's options. [`load`] reads, overrides and validates a file and
//! returns either a [`Graph`] whose stages are in topological order or a
//! [`GraphError`] listing every problem found, each with file, line and key.

mod build;
mod describe;
mod deser;
mod error;
mod options;
mod paths;
mod registry;
mod source;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{GraphError, Location, Problem};
pub use options::*;
pub use registry::{DataKind, StageOptions, StageType};

/// A validated graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// The graph file, as it was named on the command line.
    pub file: PathBuf,
    pub run: RunOptions,
    /// Every stage, sources first: each stage comes after all its inputs.
    pub stages: Vec<Stage>,
}

/// One stage of a validated graph. Relative paths in its options have been
/// made absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub options: StageOptions,
    /// Names of the stages feeding this one, in the order of its type's
    /// input ports.
    pub inputs: Vec<String>,
    /// Option keys whose values differ from the type's defaults (required
    /// keys included), in declaration order; for listings.
    pub non_default: Vec<String>,
}

impl Stage {
    /// The registry entry of this stage's type.
    pub fn stage_type(&self) -> &'static StageType {
        self.options.stage_type()
    }

    /// What the stage emits; `None` for sinks.
    pub fn output(&self) -> Option<DataKind> {
        self.stage_type().output
    }
}

impl Graph {
    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// A human-readable listing of the topology for `locvtp-flow check`.
    pub fn describe(&self) -> String {
        describe::describe(self)
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
    build::build(text, file, &graph_dir, cwd, overrides)
}
