//! Every replica applies the same mean gradient and takes the same step.

use super::assemble::AssembledMean;
use super::reduce::MeanShard;
use super::{Shared, Snapshot, SnapshotReason, StepReport, TrainConfig};
use crate::accumulate::PerTime;
use crate::bulk::Unbatched;
use crate::manifest::RUN_MANIFEST_KEY;
use crate::run::{catch_panic, RunShared, StopCause};
use crate::samples::StepInfo;
use crate::stats::RunStats;
use locvtp_model::train::{TrainMeta, TrainingSnapshot, LR_SCHEDULE_KEY};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Kind;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::ExchangeCore;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// Whether the state after step `at` goes to the checkpoint sinks: at epoch
/// ends, every `every` steps, and after every step once the run is stopping
/// for a signal (the last one before the stop is what resumes).
fn wants_snapshot(cfg: &TrainConfig, at: StepInfo, run: &RunShared) -> Option<SnapshotReason> {
    let done = at.step + 1;
    if !cfg.snapshots {
        None
    } else if at.epoch_end {
        Some(SnapshotReason::EpochEnd)
    } else if cfg.snapshot_every.is_some_and(|k| done.is_multiple_of(k)) {
        Some(SnapshotReason::Periodic)
    } else if matches!(run.stop_cause(), Some(StopCause::Signal(_))) {
        Some(SnapshotReason::Stop)
    } else {
        None
    }
}

pub(super) fn apply<'s>(
    means: Stream<'s, u64, Unbatched<MeanShard>>,
    shared: Rc<RefCell<Shared>>,
    cfg: TrainConfig,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<StepReport>> {
    let index = means.scope().index();
    means.unary_frontier::<CapacityContainerBuilder<Vec<StepReport>>, _, _, _>(
        ExchangeCore::new(|m: &MeanShard| u64::from(m.target)),
        "ApplyGradients",
        move |_cap, _info| {
            let mut open: PerTime<Vec<MeanShard>> = PerTime::default();
            let mut last_report = Instant::now();
            move |(input, frontier), output| {
                input.for_each(|cap, data| open.entry(&cap).append(data));
                for (cap, shards) in open.drain_complete(frontier) {
                    if shards.is_empty() {
                        continue;
                    }
                    let mut sh = shared.borrow_mut();
                    let mean = match AssembledMean::gather(shards, sh.layout.total) {
                        Ok(mean) => mean,
                        Err(e) => {
                            run.fail(&cfg.stage, format!("step {}: {e}", *cap.time() + 1));
                            return;
                        }
                    };
                    let at = mean.at;
                    let began = Instant::now();
                    let lr = cfg.schedule.lr_at(i64::from(at.epoch));
                    let stepped = catch_panic(|| {
                        let pieces = mean.pieces();
                        let pieces: Vec<&[f32]> = pieces.iter().map(|p| &**p).collect();
                        sh.replica.adam.step_pieces(&pieces, lr)
                    });
                    if let Err(e) = stepped {
                        run.fail(&cfg.stage, format!("step {}: the optimizer step: {e}", at.step + 1));
                        return;
                    }
                    sh.busy += began.elapsed();
                    let samples = mean.samples;
                    let (wait, busy) = (sh.wait.as_secs_f64(), sh.busy.as_secs_f64());
                    let report = StepReport {
                        at,
                        lr,
                        samples,
                        terms: mean.terms.clone(),
                        samples_per_s: f64::from(samples) / last_report.elapsed().as_secs_f64().max(1e-9),
                        data_wait_share: if wait + busy > 0.0 { wait / (wait + busy) } else { 0.0 },
                        text_encoder_forwards: RunStats::get(&run.stats.text_forwards),
                        worker: index as u32,
                        checksum: sh
                            .replica
                            .model
                            .vs
                            .trainable_variables()
                            .iter()
                            .map(|v| v.sum(Kind::Double).double_value(&[]))
                            .collect(),
                    };
                    last_report = Instant::now();
                    sh.wait = Duration::ZERO;
                    sh.busy = Duration::ZERO;
                    if index == 0 {
                        RunStats::add(&run.stats.train_steps, 1);
                        if let Some(reason) = wants_snapshot(&cfg, at, &run) {
                            let done = at.step + 1;
                            let meta = TrainMeta {
                                epoch: i64::from(at.epoch) + i64::from(at.epoch_end),
                                step: done as i64,
                                seed: cfg.seed,
                                extra: BTreeMap::from([
                                    (
                                        LR_SCHEDULE_KEY.to_string(),
                                        serde_json::to_string(&cfg.schedule).expect("a schedule serialises"),
                                    ),
                                    (
                                        RUN_MANIFEST_KEY.to_string(),
                                        cfg.manifest.with_data(run.data_fingerprint()).to_json(),
                                    ),
                                ]),
                            };
                            match TrainingSnapshot::take(&sh.replica.model, &sh.replica.adam, &meta) {
                                Ok(state) => sh.snapshots.push_back(Arc::new(Snapshot { at, reason, state })),
                                Err(e) => run.fail(&cfg.stage, format!("copying the state after step {done}: {e:#}")),
                            }
                        }
                    }
                    output.session(&cap).give(report);
                    sh.next_step = at.step + 1;
                    sh.last_apply = Instant::now();
                }
                // Steps without any sample anywhere never reach this
                // operator; the frontier still says they are over.
                let mut sh = shared.borrow_mut();
                let floor = frontier.frontier().iter().next().copied().unwrap_or(u64::MAX);
                if floor > sh.next_step {
                    sh.next_step = floor;
                }
                if let Some(a) = &sh.forward_activator {
                    a.activate();
                }
            }
        },
    )
}
