//! Preparing a graph: every stage's checks against the rest of the graph
//! and the disk, in topological order, with what each stage loads for its
//! build. `check` stops here; `run` goes on to build the dataflow.

use super::{Checks, StageType};
use crate::graph::{Graph, GraphError, Stage};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

/// What a stage's `prepare` returned, for its `build` on every worker.
pub type Prepared = Arc<dyn Any + Send + Sync>;

/// Whether a graph is only checked or about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `locvtp-flow check`: everything is checked, nothing is created or
    /// loaded that only a run needs.
    Check,
    /// `locvtp-flow run`: output folders are created and inputs loaded.
    Run,
}

/// The cluster a graph runs on, as far as one process knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterShape {
    /// Worker threads per process.
    pub threads: usize,
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// This process's rank among the processes of its machine (its first
    /// worker's GPU slot is `local_rank * threads`).
    pub local_rank: usize,
}

impl ClusterShape {
    /// One process with one worker.
    pub fn single() -> ClusterShape {
        ClusterShape { threads: 1, processes: 1, process: 0, local_rank: 0 }
    }

    /// Workers in the whole cluster.
    pub fn workers(&self) -> usize {
        self.threads * self.processes
    }

    /// The global indices of this process's workers.
    pub fn local_workers(&self) -> std::ops::Range<usize> {
        self.process * self.threads..(self.process + 1) * self.threads
    }

    /// The GPU slot of global worker `index` on its machine.
    pub fn device_slot(&self, index: usize) -> usize {
        self.local_rank * self.threads + index % self.threads.max(1)
    }
}

/// A graph whose every stage prepared without a problem.
pub struct PreparedGraph {
    pub graph: Graph,
    pub shape: ClusterShape,
    /// By stage name.
    pub stages: HashMap<String, Prepared>,
}

/// What a stage's `prepare` sees of the graph.
pub struct PrepareContext<'a> {
    pub graph: &'a Graph,
    pub stage: &'a Stage,
    pub shape: &'a ClusterShape,
    pub mode: Mode,
    prepared: &'a HashMap<String, Prepared>,
}

impl<'a> PrepareContext<'a> {
    /// True when the graph is about to run (not only checked).
    pub fn running(&self) -> bool {
        self.mode == Mode::Run
    }

    /// The stage feeding input `port`.
    pub fn input(&self, port: usize) -> Option<&'a Stage> {
        self.graph.stage(self.stage.inputs.get(port)?)
    }

    /// The options of the stage feeding input `port`, if it has type `T`.
    pub fn input_options<T: StageType>(&self, port: usize) -> Option<&'a T> {
        self.input(port)?.options::<T>()
    }

    /// What the stage feeding `port` prepared, if it has type `T` and
    /// prepared without a problem.
    pub fn input_prepared<T: StageType>(&self, port: usize) -> Option<&'a T::Prepared> {
        let stage = self.input(port)?;
        stage.options::<T>()?;
        self.prepared.get(&stage.name)?.downcast_ref::<T::Prepared>()
    }

    /// The nearest stage of type `T` upstream of this one (following
    /// inputs breadth-first), with its options.
    pub fn upstream<T: StageType>(&self) -> Option<(&'a Stage, &'a T)> {
        let mut queue: VecDeque<&Stage> = self.stage.inputs.iter().filter_map(|n| self.graph.stage(n)).collect();
        while let Some(s) = queue.pop_front() {
            if let Some(o) = s.options::<T>() {
                return Some((s, o));
            }
            queue.extend(s.inputs.iter().filter_map(|n| self.graph.stage(n)));
        }
        None
    }

    /// What the nearest upstream stage of type `T` prepared.
    pub fn upstream_prepared<T: StageType>(&self) -> Option<&'a T::Prepared> {
        let (stage, _) = self.upstream::<T>()?;
        self.prepared.get(&stage.name)?.downcast_ref::<T::Prepared>()
    }

    /// The stages that take this one as an input.
    pub fn consumers(&self) -> Vec<&'a Stage> {
        self.graph.consumers(&self.stage.name)
    }

    /// Every stage of type `T` downstream of this one, with its options.
    pub fn downstream<T: StageType>(&self) -> Vec<(&'a Stage, &'a T)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut queue: VecDeque<&Stage> = self.consumers().into();
        while let Some(s) = queue.pop_front() {
            if !seen.insert(s.name.as_str()) {
                continue;
            }
            if let Some(o) = s.options::<T>() {
                out.push((s, o));
            }
            queue.extend(self.graph.consumers(&s.name));
        }
        out
    }
}

/// Prepares every stage of `graph`; every problem of every stage is
/// reported at once, each with its file, line and key.
pub fn prepare(graph: &Graph, shape: &ClusterShape, mode: Mode) -> Result<PreparedGraph, GraphError> {
    let mut problems = Vec::new();
    let mut run_checks = Checks::default();
    check_output_dir(&graph.run.output_dir, mode, &mut run_checks);
    problems.extend(run_checks.into_problems(graph, None));
    let mut prepared: HashMap<String, Prepared> = HashMap::new();
    for stage in &graph.stages {
        let mut checks = Checks::default();
        let ctx = PrepareContext { graph, stage, shape, mode, prepared: &prepared };
        let result = stage.options.prepare(&ctx, &mut checks);
        match result {
            Some(p) if checks.is_empty() => {
                prepared.insert(stage.name.clone(), p);
            }
            _ => {}
        }
        problems.extend(checks.into_problems(graph, Some(&stage.name)));
    }
    if problems.is_empty() && prepared.len() != graph.stages.len() {
        // A stage skipped its checks because an input failed to prepare,
        // which would have reported a problem; keep the run from starting
        // in any case.
        let missing: Vec<&str> =
            graph.stages.iter().map(|s| s.name.as_str()).filter(|n| !prepared.contains_key(*n)).collect();
        let mut checks = Checks::default();
        checks.error("", format!("stages {} could not be prepared", missing.join(", ")));
        problems.extend(checks.into_problems(graph, None));
    }
    if problems.is_empty() {
        Ok(PreparedGraph { graph: graph.clone(), shape: *shape, stages: prepared })
    } else {
        Err(GraphError::new(problems))
    }
}

/// The output folder exists or can be made, and is writable. A check only
/// looks; a run creates it.
fn check_output_dir(dir: &Path, mode: Mode, checks: &mut Checks) {
    match mode {
        Mode::Run => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                checks.error("output_dir", format!("{}: cannot create the output folder: {e}", dir.display()));
                return;
            }
            let probe = dir.join(".write-test");
            match std::fs::write(&probe, b"") {
                Ok(()) => {
                    let _ = std::fs::remove_file(&probe);
                }
                Err(e) => checks.error("output_dir", format!("{}: output folder is not writable: {e}", dir.display())),
            }
        }
        Mode::Check => {
            let existing = dir.ancestors().find(|a| a.exists());
            match existing {
                Some(a) if !a.is_dir() => checks.error(
                    "output_dir",
                    format!("{}: cannot create the output folder: {} is not a folder", dir.display(), a.display()),
                ),
                Some(a) if std::fs::metadata(a).is_ok_and(|m| m.permissions().readonly()) => checks.error(
                    "output_dir",
                    format!("{}: output folder is not writable ({} is read-only)", dir.display(), a.display()),
                ),
                _ => {}
            }
        }
    }
}
