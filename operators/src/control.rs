//! The control dataflow that runs beside every graph. Each worker watches
//! its process's stop request (a signal, a failed stage) and tells every
//! other worker of the cluster, so that a signal sent to any one process
//! stops them all; when the graph is complete, each process sends its
//! counters to worker 0 for the run summary.

use crate::run::{RunShared, StopCause};
use crate::stats::Counts;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::{source, Operator};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{ProbeHandle, Scope};

/// How often a worker looks at its process's stop flag and at the graph.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Process `from` is stopping.
    Stop { from: usize, cause: StopCause },
    /// A process's counters once the graph is complete, and whether one of
    /// its sources left work undone.
    Counts { process: usize, counts: Counts, cut_short: bool },
}

/// What a worker learns over the run: worker 0 all of it, the others the
/// stop request and whether the run was cut short.
#[derive(Debug, Default, Clone)]
pub struct ClusterReport {
    /// Counters summed over every process that reported.
    pub counts: Counts,
    pub processes_reported: usize,
    /// The first stop request seen, and the process it came from.
    pub stop: Option<(usize, StopCause)>,
    /// Some process's source left work undone. Every worker learns this,
    /// so that every process of an interrupted run reports the interruption.
    pub cut_short: bool,
}

/// Builds the control dataflow in `scope`. `graph` probes the main graph's
/// sinks; `process` is this worker's process index and `reports_counts` is
/// true on one worker per process. Every worker fills its `report`; only
/// worker 0 sums the counters.
pub fn control(
    scope: Scope<'_, u64>,
    graph: ProbeHandle<u64>,
    run: Arc<RunShared>,
    process: usize,
    reports_counts: bool,
    report: Rc<RefCell<ClusterReport>>,
) {
    let watch_run = run.clone();
    let messages =
        source::<u64, CapacityContainerBuilder<Vec<ControlMsg>>, _, _>(scope, "ControlWatch", move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            activator.activate();
            let mut cap = Some(cap);
            let mut told = false;
            move |output| {
                let Some(held) = cap.as_ref() else { return };
                if !told && watch_run.stopping() {
                    told = true;
                    if let Some(cause) = watch_run.stop_cause() {
                        output.session(held).give(ControlMsg::Stop { from: process, cause });
                    }
                }
                if graph.done() {
                    if reports_counts {
                        output.session(held).give(ControlMsg::Counts {
                            process,
                            counts: watch_run.stats.snapshot(),
                            cut_short: watch_run.cut_short(),
                        });
                    }
                    cap = None;
                    return;
                }
                activator.activate_after(POLL);
            }
        });
    let is_first = scope.index() == 0;
    messages.broadcast().sink(Pipeline, "ControlApply", move |(input, _frontier)| {
        input.for_each(|_cap, data| {
            for msg in data.drain(..) {
                match msg {
                    ControlMsg::Stop { from, cause } => {
                        if from != process {
                            tracing::warn!("process {from} is stopping ({cause:?}); stopping this one too");
                        }
                        run.request_stop(cause);
                        let mut r = report.borrow_mut();
                        if r.stop.is_none() {
                            r.stop = Some((from, cause));
                        }
                    }
                    ControlMsg::Counts { counts, cut_short, .. } => {
                        let mut r = report.borrow_mut();
                        r.cut_short |= cut_short;
                        if is_first {
                            r.counts.add(&counts);
                            r.processes_reported += 1;
                        }
                    }
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunShared;
    use timely::dataflow::operators::{Input, Probe};

    #[test]
    fn a_stop_request_is_seen_and_counts_arrive_once_the_graph_is_done() {
        let (stop, counts) = timely::execute::execute_directly(|worker| {
            let run = Arc::new(RunShared::default());
            crate::stats::RunStats::add(&run.stats.videos_done, 5);
            let report = Rc::new(RefCell::new(ClusterReport::default()));
            let graph = ProbeHandle::new();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u32>>();
                stream.probe_with(&graph);
                input
            });
            worker.dataflow::<u64, _, _>(|scope| control(scope, graph.clone(), run.clone(), 0, true, report.clone()));
            input.send(1);
            input.advance_to(1);
            run.request_stop(StopCause::Signal(15));
            for _ in 0..20 {
                worker.step();
            }
            drop(input);
            while worker.step_or_park(None) {}
            let r = report.borrow().clone();
            (r.stop, r.counts.videos_done)
        });
        assert_eq!(stop, Some((0, StopCause::Signal(15))));
        assert_eq!(counts, 5);
    }

    #[test]
    fn every_process_learns_that_another_one_was_cut_short() {
        // Two workers stand for two processes, each with its own run state;
        // only the first one's source left work undone.
        let config = timely::Config::process(2);
        let guards = timely::execute(config, |worker| {
            let index = worker.index();
            let run = Arc::new(RunShared::default());
            if index == 0 {
                run.request_stop(StopCause::Signal(15));
                run.mark_cut_short();
            }
            let report = Rc::new(RefCell::new(ClusterReport::default()));
            let graph = ProbeHandle::new();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u32>>();
                stream.probe_with(&graph);
                input
            });
            worker
                .dataflow::<u64, _, _>(|scope| control(scope, graph.clone(), run.clone(), index, true, report.clone()));
            input.advance_to(1);
            drop(input);
            while worker.step_or_park(None) {}
            let r = report.borrow().clone();
            (index, r.cut_short, r.stop, run.stop_cause())
        })
        .unwrap();
        let mut seen: Vec<_> = guards.join().into_iter().map(|r| r.unwrap()).collect();
        seen.sort_by_key(|s| s.0);
        for (index, cut_short, stop, cause) in seen {
            assert!(cut_short, "worker {index}");
            assert_eq!(stop, Some((0, StopCause::Signal(15))), "worker {index}");
            assert_eq!(cause, Some(StopCause::Signal(15)), "worker {index}");
        }
    }
}
