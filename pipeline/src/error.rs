//! How a command fails, and the exit code each failure maps to: the one
//! place where exit codes are decided.

use crate::graph::GraphError;
use locvtp_operators::FatalError;
use std::fmt;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum RunError {
    /// The graph or a path in it is wrong, an output folder is in use by
    /// another run, or an output to resume holds features of other
    /// settings; nothing was started. Exit 2.
    Config(GraphError),
    /// The command line or the cluster's configuration is wrong (no secret,
    /// an index out of range, a hostfile that cannot be read); nothing was
    /// started. Exit 2.
    Usage(anyhow::Error),
    /// Setting up the run failed (the cluster, an output that cannot be
    /// replaced). Exit 1.
    Setup(anyhow::Error),
    /// A stage failed, or an output lacks videos the run reports done;
    /// finished work is kept. Exit 1, or 2 when the checkpoint a training
    /// run resumes was trained on other settings or data (a configuration
    /// problem).
    Fatal(FatalError),
    /// Every item failed. Exit 1.
    NothingDone { failed: u64 },
    /// `--strict`, and some items failed. Exit 1.
    ItemsFailed { failed: u64 },
    /// Stopped by a signal; finished work is kept and the same command
    /// resumes. Exit 128 + the signal's number (130 for Ctrl-C, 143 for
    /// SIGTERM).
    Interrupted { signal: i32 },
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Usage(_) => 2,
            RunError::Fatal(e) if e.resume_mismatch => 2,
            RunError::Interrupted { signal } => (128 + signal).clamp(0, 255) as u8,
            RunError::Setup(_) | RunError::Fatal(_) | RunError::NothingDone { .. } | RunError::ItemsFailed { .. } => 1,
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "{e}"),
            RunError::Setup(e) | RunError::Usage(e) => write!(f, "error: {e:#}"),
            RunError::Fatal(e) => write!(f, "error: {e}"),
            RunError::NothingDone { failed } => {
                write!(f, "error: no video could be processed ({failed} failed; see errors.jsonl)")
            }
            RunError::ItemsFailed { failed } => write!(f, "error: {failed} items failed and --strict is set"),
            RunError::Interrupted { .. } => {
                write!(f, "interrupted: finished work is kept; run the same command to resume")
            }
        }
    }
}

impl std::error::Error for RunError {}

impl From<GraphError> for RunError {
    fn from(e: GraphError) -> Self {
        RunError::Config(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(RunError::Config(GraphError { problems: vec![] }).exit_code(), 2);
        assert_eq!(RunError::Usage(anyhow::anyhow!("no secret")).exit_code(), 2);
        assert_eq!(RunError::Interrupted { signal: 2 }.exit_code(), 130);
        assert_eq!(RunError::Interrupted { signal: 15 }.exit_code(), 143);
        assert_eq!(RunError::NothingDone { failed: 3 }.exit_code(), 1);
        let fatal = RunError::Fatal(FatalError::new("encode", "out of memory"));
        assert_eq!(fatal.exit_code(), 1);
        let mismatch =
            RunError::Fatal(FatalError { resume_mismatch: true, ..FatalError::new("samples", "other data") });
        assert_eq!(mismatch.exit_code(), 2);
        assert_eq!(fatal.to_string(), "error: stage `encode`: out of memory");
    }
}
