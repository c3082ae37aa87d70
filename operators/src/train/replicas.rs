//! Worker 0 checks that every replica took the same step, then emits the
//! step's report and the snapshots taken after it.

use super::{Shared, StepReport, TrainConfig, TrainEvent};
use crate::accumulate::PerTime;
use crate::run::RunShared;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// The first worker whose checksum differs from worker 0's, if any.
fn diverged(reports: &[StepReport]) -> Option<&StepReport> {
    reports.iter().find(|r| r.checksum != reports[0].checksum)
}

pub(super) fn check<'s>(
    reports: Stream<'s, u64, Vec<StepReport>>,
    shared: Rc<RefCell<Shared>>,
    cfg: TrainConfig,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<TrainEvent>> {
    reports.unary_frontier::<CapacityContainerBuilder<Vec<TrainEvent>>, _, _, _>(
        Exchange::new(|_: &StepReport| 0),
        "CheckReplicas",
        move |_cap, _info| {
            let mut open: PerTime<Vec<StepReport>> = PerTime::default();
            let mut failed = false;
            move |(input, frontier), output| {
                input.for_each(|cap, data| open.entry(&cap).append(data));
                for (cap, mut reports) in open.drain_complete(frontier) {
                    if failed || reports.is_empty() {
                        continue;
                    }
                    reports.sort_by_key(|r| r.worker);
                    if let Some(bad) = diverged(&reports) {
                        run.fail(
                            &cfg.stage,
                            format!(
                                "replicas diverged at step {}: worker {} differs from worker {}",
                                bad.at.step + 1,
                                bad.worker,
                                reports[0].worker
                            ),
                        );
                        failed = true;
                        continue;
                    }
                    let step = reports[0].at.step;
                    run.record_step(reports[0].progress());
                    let mut session = output.session(&cap);
                    session.give(TrainEvent::Step(reports.swap_remove(0)));
                    let mut sh = shared.borrow_mut();
                    while sh.snapshots.front().is_some_and(|s| s.at.step <= step) {
                        let snapshot = sh.snapshots.pop_front().expect("front exists");
                        session.give(TrainEvent::Snapshot(snapshot));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::StepInfo;

    fn report(worker: u32, checksum: f64) -> StepReport {
        StepReport {
            at: StepInfo { step: 3, epoch: 0, epoch_end: false, steps_total: 8 },
            lr: 0.1,
            samples: 4,
            terms: vec![],
            samples_per_s: 1.0,
            data_wait_share: 0.0,
            text_encoder_forwards: 0,
            worker,
            checksum: vec![checksum],
        }
    }

    #[test]
    fn a_replica_that_differs_is_named() {
        assert!(diverged(&[report(0, 1.0), report(1, 1.0)]).is_none());
        assert_eq!(diverged(&[report(0, 1.0), report(1, 1.0), report(2, 1.5)]).unwrap().worker, 2);
    }
}
