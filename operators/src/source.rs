//! A source that paces itself: it emits one item per timestamp and keeps
//! at most `window` timestamps ahead of what the ends of its flow have
//! completed (the run's bound on work in flight, hence on memory).

use crate::run::RunShared;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

/// How long a source blocked by its window waits before looking again: the
/// ends of the flow do not wake it, and a few milliseconds are nothing next
/// to the work of one item.
const RECHECK: Duration = Duration::from_millis(5);

/// Items emitted per activation before the worker gets to run the rest of
/// the dataflow.
const BURST: usize = 64;

/// Emits `items` at times 0, 1, 2, ...: item `k` waits until every time
/// below `k - window` has passed `flow`. Stops early, taking no new item,
/// once the run is stopping.
pub fn paced_source<'s, D: Clone + 'static>(
    scope: Scope<'s, u64>,
    name: &str,
    items: Vec<D>,
    window: u64,
    flow: ProbeHandle<u64>,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<D>> {
    source::<u64, CapacityContainerBuilder<Vec<D>>, _, _>(scope, name, move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        activator.activate();
        let mut cap = Some(cap);
        let mut items = items.into_iter();
        let mut next = 0u64;
        move |output| {
            let Some(held) = cap.as_mut() else { return };
            for _ in 0..BURST {
                if run.stopping() {
                    if items.len() > 0 {
                        run.mark_cut_short();
                    }
                    cap = None;
                    return;
                }
                if flow.less_than(&next.saturating_sub(window)) {
                    activator.activate_after(RECHECK);
                    return;
                }
                let Some(item) = items.next() else {
                    cap = None;
                    return;
                };
                output.session(&*held).give(item);
                next += 1;
                // Nothing more leaves at the time just used: let the
                // frontier pass it now, not when the next item leaves.
                // Operators that wait for the frontier to pass a time
                // (the encoder's partial batch) would otherwise wait on
                // an item the window holds back until they finish.
                held.downgrade(&next);
            }
            activator.activate();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, Probe};

    #[test]
    fn items_leave_in_order_one_time_each_and_all_of_them() {
        let run = Arc::new(RunShared::default());
        let got = timely::example(move |scope| {
            let flow = ProbeHandle::new();
            let stream = paced_source(scope, "Items", (0..200u32).collect(), 3, flow.clone(), run);
            stream.probe_with(&flow).capture()
        });
        let got = got.extract();
        assert_eq!(got.len(), 200);
        for (t, items) in got {
            assert_eq!(items, vec![t as u32]);
        }
    }

    /// An operator that lets what it holds go only once the frontier has
    /// passed every time in it (as the encoder does with a partial batch)
    /// must not wait on the source: the source holds no time it has
    /// already emitted at, so a window of 1 over such a batcher drains.
    #[test]
    fn the_source_holds_no_time_it_has_emitted_at() {
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::Operator;
        use timely::dataflow::operators::Capability;
        let run = Arc::new(RunShared::default());
        let (drained, steps) = timely::execute_directly(move |worker| {
            let flow = ProbeHandle::new();
            let ends = flow.clone();
            worker.dataflow::<u64, _, _>(move |scope| {
                paced_source(scope, "Items", (0..6u32).collect(), 1, flow.clone(), run)
                    .unary_frontier::<CapacityContainerBuilder<Vec<u32>>, _, _, _>(Pipeline, "HoldAll", |_, _| {
                        let mut held: Vec<(Capability<u64>, Vec<u32>)> = Vec::new();
                        move |(input, frontier), output| {
                            input.for_each(|cap, data| {
                                held.push((cap.retain_least(0).expect("u64 times"), std::mem::take(data)))
                            });
                            if held.iter().all(|(cap, _)| !frontier.less_equal(cap.time())) {
                                for (cap, items) in held.drain(..) {
                                    output.session(&cap).give_iterator(items.into_iter());
                                }
                            }
                        }
                    })
                    .probe_with(&flow);
            });
            // Bounded in steps, not in time: a held time would stall it
            // for good, however long it ran.
            let mut steps = 0;
            while !ends.done() && steps < 10_000 {
                worker.step_or_park(Some(Duration::from_millis(1)));
                steps += 1;
            }
            let drained = ends.done();
            // A stalled dataflow would keep `execute_directly` stepping.
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            (drained, steps)
        });
        assert!(drained, "the batcher still waits after {steps} steps");
    }

    #[test]
    fn a_stopping_run_takes_no_new_item() {
        let run = Arc::new(RunShared::default());
        run.request_stop(crate::run::StopCause::Signal(2));
        let got = timely::example(move |scope| {
            paced_source(scope, "Items", vec![1, 2, 3], 8, ProbeHandle::new(), run).capture()
        });
        assert!(got.extract().is_empty());
    }
}
