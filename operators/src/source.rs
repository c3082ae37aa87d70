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
                held.downgrade(&next);
                output.session(&*held).give(item);
                next += 1;
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
