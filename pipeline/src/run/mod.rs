//! Running a graph: process 0 locks its output folders, every stage is
//! prepared (the checks of `check`), then every worker of the cluster
//! builds the graph's dataflow and the control dataflow beside it, runs
//! them to completion, and process 0 sums up and, only when the run
//! succeeded, puts the outputs that wait for that in place.

pub mod cluster;
mod connect;
pub mod handshake;
pub mod interrupt;
pub mod lock;
pub mod manifest;
mod progress;
pub mod summary;

pub use cluster::Cluster;

use crate::engine::{self, Mode};
use crate::error::RunError;
use crate::graph::Graph;
use locvtp_operators::control::{control, ClusterReport};
use locvtp_operators::errors::ErrorTally;
use locvtp_operators::{FatalError, RunShared, StopCause};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use summary::{RunRecord, RunSummary};
use timely::dataflow::ProbeHandle;

/// Flags of `locvtp-flow run` beyond the graph.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    /// Any per-item error fails the run.
    pub strict: bool,
    /// No progress display.
    pub quiet: bool,
}

/// What the first worker of a process knows when the dataflows are
/// complete; only worker 0 has the cluster's error tally.
struct LeaderEnd {
    tally: Option<ErrorTally>,
    report: ClusterReport,
}

/// Runs `graph` on this process's part of `cluster`. Process 0 returns the
/// summary of the whole cluster; the others a summary of what they saw.
pub fn run(graph: &Graph, cluster: &Cluster, flags: &RunFlags) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let shape = cluster.shape();
    // Before prepare, which already opens spools and clears temporary
    // files; held until the summary is written (it travels with it).
    let locks = if cluster.is_first_process() { Some(Arc::new(lock::lock_outputs(graph)?)) } else { None };
    let prepared = engine::prepare(graph, &shape, Mode::Run)?;
    if cluster.is_first_process() {
        // Failed items are retried on every run, so the lines of an earlier
        // run would repeat or be stale.
        let errors = graph.run.errors_file();
        if let Err(e) = std::fs::remove_file(&errors) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(RunError::Setup(anyhow::anyhow!("{}: cannot replace: {e}", errors.display())));
            }
        }
    }
    let run = Arc::new(RunShared::default());
    interrupt::install(run.clone());
    let progress = progress::Progress::start(
        run.clone(),
        std::time::Duration::from_secs_f64(graph.run.log_every_s),
        flags.quiet || !cluster.is_first_process(),
    );
    let prepared = Arc::new(prepared);
    let errors_path = graph.run.errors_file();
    let workers = {
        let (run, prepared) = (run.clone(), prepared.clone());
        let stopping = run.clone();
        cluster.execute(&move || stopping.stopping(), move |worker| {
            let index = worker.index();
            let process_leader = index % shape.threads.max(1) == 0;
            let tally = Rc::new(RefCell::new(ErrorTally::default()));
            let report = Rc::new(RefCell::new(ClusterReport::default()));
            let done = ProbeHandle::new();
            let built = worker.dataflow::<u64, _, _>(|scope| {
                engine::build(scope, &prepared, &run, &done, errors_path.clone(), tally.clone())
            });
            if let Err(e) = built {
                run.fail(&e.stage, &e.message);
            }
            worker.dataflow::<u64, _, _>(|scope| {
                control(scope, done.clone(), run.clone(), shape.process, process_leader, report.clone())
            });
            while worker.step_or_park(None) {}
            process_leader.then(|| LeaderEnd {
                tally: (index == 0).then(|| tally.borrow().clone()),
                report: report.borrow().clone(),
            })
        })
    };
    let guards = match workers {
        Ok(guards) => guards,
        Err(e) => {
            return Err(match run.stop_cause() {
                // A signal while the cluster connects: nothing was started.
                Some(StopCause::Signal(signal)) => RunError::Interrupted { signal },
                _ => RunError::Setup(e),
            });
        }
    };
    let mut leader = None;
    for result in guards.join() {
        match result {
            Ok(Some(w)) => leader = Some(w),
            Ok(None) => {}
            Err(e) => return Err(RunError::Setup(anyhow::anyhow!("a worker failed: {e}"))),
        }
    }
    drop(progress);

    let (tally, report) = match leader {
        Some(w) => (w.tally.unwrap_or_default(), w.report),
        None => (ErrorTally::default(), ClusterReport::default()),
    };
    let counts = if report.processes_reported > 0 { report.counts } else { run.stats.snapshot() };
    let stop = run.stop_cause().map(|cause| (report.stop.map(|(from, _)| from).unwrap_or(shape.process), cause));
    let fatal = run.fatal().or_else(|| match stop {
        Some((from, StopCause::Failure)) => {
            Some(FatalError::new("?", format!("process {from} failed; its log names the stage and the cause")))
        }
        _ => None,
    });
    // A signal that came after the last item changes nothing.
    let cut_short = run.cut_short() || report.cut_short;
    let signal = match stop {
        Some((_, StopCause::Signal(s))) if fatal.is_none() && cut_short => Some(s),
        _ => None,
    };
    let mut summary = RunSummary::new(RunRecord {
        graph,
        workers: cluster.workers(),
        processes: cluster.processes,
        wall: started.elapsed(),
        counts,
        tally: &tally,
        outputs: run.outputs(),
        skipped_files: run.skipped_files(),
        fatal,
        signal,
    });
    // Outputs that replace an earlier run's go in place only now, when the
    // whole cluster's outcome is known to be a success.
    let succeeded = summary.outcome(flags.strict, cluster.is_first_process()).is_ok();
    if let Some(failure) = run.settle_outputs(succeeded) {
        summary.fatal.get_or_insert(failure);
    }
    summary.outputs = run.outputs();
    summary.locks = locks;
    Ok(summary)
}
