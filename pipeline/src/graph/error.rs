//! Problems found in a graph file, reported all together.

use std::fmt;
use std::path::PathBuf;

/// Where a problem's key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The graph file. `line` is 1-based; it is `None` when the problem
    /// concerns the file as a whole (it could not be read, a required table
    /// is absent).
    File { path: PathBuf, line: Option<usize> },
    /// A `--set KEY=VALUE` argument, named by its key as written.
    Set { key: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line: Some(line) } => write!(f, "{}:{line}", path.display()),
            Location::File { path, line: None } => write!(f, "{}", path.display()),
            Location::Set { key } => write!(f, "--set {key}"),
        }
    }
}

/// One problem: where, which key (dotted, e.g. `stages.encode.batch_size`;
/// empty for problems such as TOML syntax that have no key), and what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_is_location = matches!(&self.location, Location::Set { key } if *key == self.key);
        if self.key.is_empty() || key_is_location {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.key, self.message)
        }
    }
}

/// Every problem found in a graph file and its overrides, one per line when
/// displayed, file problems in line order first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub problems: Vec<Problem>,
}

impl GraphError {
    pub(crate) fn new(mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| match &p.location {
            Location::File { line: Some(line), .. } => (0, *line),
            Location::Set { .. } => (1, 0),
            Location::File { line: None, .. } => (2, 0),
        });
        GraphError { problems }
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}
