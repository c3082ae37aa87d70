//! Shard owners sum the micro-batches' gradients and send the mean back.

use super::forward::GradPart;
use crate::accumulate::PerTime;
use crate::bulk::{BulkRecord, Floats, Unbatched};
use crate::samples::StepInfo;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::ExchangeCore;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// A chunk of the step's mean gradient, addressed to one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeanShard {
    pub at: StepInfo,
    pub target: u32,
    pub chunk: u32,
    pub samples: u32,
    pub values: Floats,
    /// Loss terms averaged over the step's samples (chunk 0 only).
    pub terms: Vec<(String, f64)>,
}

impl BulkRecord for MeanShard {
    type Header = (StepInfo, u32, u32, u32, Vec<(String, f64)>);
    fn header(&self) -> Self::Header {
        (self.at, self.target, self.chunk, self.samples, self.terms.clone())
    }
    fn payload(&self) -> &Floats {
        &self.values
    }
    fn assemble((at, target, chunk, samples, terms): Self::Header, values: Floats) -> MeanShard {
        MeanShard { at, target, chunk, samples, values, terms }
    }
}

/// The mean of the micro-batches' chunks: summed in micro-batch order (so
/// that the result is the same whichever workers computed them), then
/// divided by the step's sample count. The parts are read where they are
/// (views of a local gradient, or the bytes of their messages); the first
/// two are added into a fresh vector in one pass.
pub(super) fn mean_of(mut parts: Vec<GradPart>) -> (u32, Vec<f32>, Vec<(String, f64)>) {
    parts.sort_by_key(|p| p.part);
    let samples: u32 = parts.iter().map(|p| p.samples).sum();
    let mut terms: Vec<(String, f64)> = Vec::new();
    for p in &parts {
        for (name, v) in &p.terms {
            match terms.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += v,
                None => terms.push((name.clone(), *v)),
            }
        }
    }
    let mut sum: Vec<f32> = match parts.as_slice() {
        [] => Vec::new(),
        [only] => only.values.with_slice(|v| v.to_vec()),
        [a, b, ..] => a.values.with_slice(|a| b.values.with_slice(|b| a.iter().zip(b).map(|(x, y)| x + y).collect())),
    };
    for p in parts.iter().skip(2) {
        p.values.with_slice(|more| sum.iter_mut().zip(more).for_each(|(x, y)| *x += y));
    }
    let n = samples.max(1) as f32;
    sum.iter_mut().for_each(|x| *x /= n);
    let n = f64::from(samples.max(1));
    let terms = terms.into_iter().map(|(k, v)| (k, v / n)).collect();
    (samples, sum, terms)
}

/// The mean of one chunk, sent to every worker: one vector that every
/// target's shard views.
fn send_mean(parts: Vec<GradPart>, chunk: u32, peers: usize, mut give: impl FnMut(MeanShard)) {
    let at = parts[0].at;
    let (samples, values, terms) = mean_of(parts);
    let values = Arc::new(values);
    for target in 0..peers {
        let values = Floats::view(&values, 0..values.len());
        give(MeanShard { at, target: target as u32, chunk, samples, values, terms: terms.clone() });
    }
}

/// Sums each chunk's micro-batches on the chunk's owner and sends the mean
/// to every worker. A chunk leaves as soon as its `expected` micro-batches
/// are in (so that sending means overlaps receiving the other chunks), or
/// once the frontier passes its step (a step whose micro-batches were not
/// all filled).
pub fn reduce<'s>(
    parts: Stream<'s, u64, Unbatched<GradPart>>,
    expected: usize,
) -> Stream<'s, u64, Unbatched<MeanShard>> {
    let peers = parts.scope().peers();
    parts.unary_frontier::<CapacityContainerBuilder<Unbatched<MeanShard>>, _, _, _>(
        ExchangeCore::new(|g: &GradPart| u64::from(g.chunk)),
        "ReduceGradients",
        move |_cap, _info| {
            // Per step: the parts of the chunks this worker owns.
            let mut open: PerTime<std::collections::BTreeMap<u32, Vec<GradPart>>> = PerTime::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let chunks = open.entry(&cap);
                    let mut session = output.session(&cap);
                    for p in data.drain(..) {
                        let chunk = p.chunk;
                        let parts = chunks.entry(chunk).or_default();
                        parts.push(p);
                        if parts.len() == expected {
                            let parts = chunks.remove(&chunk).expect("just filled");
                            send_mean(parts, chunk, peers, |m| session.give(m));
                        }
                    }
                });
                for (cap, chunks) in open.drain_complete(frontier) {
                    let mut session = output.session(&cap);
                    for (chunk, parts) in chunks {
                        send_mean(parts, chunk, peers, |m| session.give(m));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(part: u32, samples: u32, values: &[f32]) -> GradPart {
        GradPart {
            at: StepInfo { step: 0, epoch: 0, epoch_end: false, steps_total: 1 },
            part,
            chunk: 0,
            samples,
            values: Floats::owned(values.to_vec()),
            terms: vec![("total".into(), f64::from(samples) * 2.0)],
        }
    }

    #[test]
    fn the_mean_does_not_depend_on_arrival_order() {
        let a = part(0, 2, &[1e8, 1.0]);
        let b = part(1, 1, &[1.0, 3.0]);
        let c = part(2, 3, &[-1e8, 1e-8]);
        let (n, m1, t1) = mean_of(vec![a.clone(), b.clone(), c.clone()]);
        let (_, m2, t2) = mean_of(vec![c, a, b]);
        assert_eq!(n, 6);
        assert_eq!(m1, m2, "summed in part order whatever the arrival order");
        assert_eq!(t1, t2);
        assert_eq!(t1, vec![("total".to_string(), 2.0)]);
        assert_eq!(m1[1], (1.0f32 + 3.0 + 1e-8) / 6.0);
        assert_eq!(m1[0], (1e8f32 + 1.0 - 1e8) / 6.0, "((a + b) + c) / n, in that order");
    }
}
