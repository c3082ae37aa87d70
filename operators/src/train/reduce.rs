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

/// The mean of the micro-batches' chunks, written into `sum`: summed in
/// micro-batch order (so that the result is the same whichever workers
/// computed them), then divided by the step's sample count. The parts are
/// read where they are (views of a local gradient, or the bytes of their
/// messages); the first two are added (and, when there are only two,
/// divided) in one pass.
pub(super) fn mean_of(mut parts: Vec<GradPart>, sum: &mut Vec<f32>) -> (u32, Vec<(String, f64)>) {
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
    let n = samples.max(1) as f32;
    // A reused buffer has the chunk's length already: no pass over it.
    sum.resize(parts.first().map_or(0, |p| p.values.len()), 0.0);
    match parts.as_slice() {
        [] => {}
        [only] => sum.iter_mut().zip(only.values.as_f32().iter()).for_each(|(s, x)| *s = x / n),
        [a, b] => {
            let (a, b) = (a.values.as_f32(), b.values.as_f32());
            sum.iter_mut().zip(a.iter().zip(b.iter())).for_each(|(s, (x, y))| *s = (x + y) / n);
        }
        [a, b, rest @ ..] => {
            let (a, b) = (a.values.as_f32(), b.values.as_f32());
            sum.iter_mut().zip(a.iter().zip(b.iter())).for_each(|(s, (x, y))| *s = x + y);
            for p in rest {
                sum.iter_mut().zip(p.values.as_f32().iter()).for_each(|(s, x)| *s += x);
            }
            sum.iter_mut().for_each(|s| *s /= n);
        }
    }
    let n = f64::from(samples.max(1));
    let terms = terms.into_iter().map(|(k, v)| (k, v / n)).collect();
    (samples, terms)
}

/// The vectors that means are summed into, each reused once every shard
/// that viewed it is gone: a step sums hundreds of chunks, and freshly
/// allocated ones cost page faults each time. Buffers come free in the
/// order they were filled (a step's shards are dropped together), so the
/// search for a free one starts after the last one filled: one look in
/// the steady state, instead of a walk over hundreds of shared counters.
#[derive(Default)]
struct SumBuffers {
    buffers: Vec<Arc<Vec<f32>>>,
    next: usize,
}

impl SumBuffers {
    /// Fills a free buffer (or a new one) with `fill` and hands out a
    /// shared handle to it.
    fn fill<R>(&mut self, fill: impl FnOnce(&mut Vec<f32>) -> R) -> (Arc<Vec<f32>>, R) {
        let n = self.buffers.len();
        let free = (0..n).map(|k| (self.next + k) % n).find(|&i| Arc::get_mut(&mut self.buffers[i]).is_some());
        let i = free.unwrap_or_else(|| {
            self.buffers.push(Arc::new(Vec::new()));
            n
        });
        self.next = (i + 1) % self.buffers.len();
        let out = fill(Arc::get_mut(&mut self.buffers[i]).expect("no other handle"));
        (self.buffers[i].clone(), out)
    }
}

/// The mean of one chunk, sent to every worker: one vector that every
/// target's shard views.
fn send_mean(
    parts: Vec<GradPart>,
    chunk: u32,
    peers: usize,
    buffers: &mut SumBuffers,
    mut give: impl FnMut(MeanShard),
) {
    let at = parts[0].at;
    let (values, (samples, terms)) = buffers.fill(|sum| mean_of(parts, sum));
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
            let mut buffers = SumBuffers::default();
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
                            send_mean(parts, chunk, peers, &mut buffers, |m| session.give(m));
                        }
                    }
                });
                for (cap, chunks) in open.drain_complete(frontier) {
                    let mut session = output.session(&cap);
                    for (chunk, parts) in chunks {
                        send_mean(parts, chunk, peers, &mut buffers, |m| session.give(m));
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
        let (mut m1, mut m2) = (Vec::new(), vec![9.0; 5]);
        let (n, t1) = mean_of(vec![a.clone(), b.clone(), c.clone()], &mut m1);
        let (_, t2) = mean_of(vec![c, a, b], &mut m2);
        assert_eq!(n, 6);
        assert_eq!(m1, m2, "summed in part order whatever the arrival order");
        assert_eq!(t1, t2);
        assert_eq!(t1, vec![("total".to_string(), 2.0)]);
        assert_eq!(m1[1], (1.0f32 + 3.0 + 1e-8) / 6.0);
        assert_eq!(m1[0], (1e8f32 + 1.0 - 1e8) / 6.0, "((a + b) + c) / n, in that order");
    }

    #[test]
    fn one_or_two_parts_are_averaged_too() {
        let a = part(0, 2, &[1e8, 1.0]);
        let b = part(1, 1, &[1.0, 3.0]);
        let mut two = vec![7.0; 2];
        assert_eq!(mean_of(vec![b.clone(), a.clone()], &mut two).0, 3);
        assert_eq!(two, vec![(1e8f32 + 1.0) / 3.0, 4.0 / 3.0]);
        let mut one = Vec::new();
        assert_eq!(mean_of(vec![a], &mut one).0, 2);
        assert_eq!(one, vec![5e7, 0.5]);
    }

    #[test]
    fn sum_buffers_are_reused_once_no_shard_views_them() {
        let mut buffers = SumBuffers::default();
        let (first, ()) = buffers.fill(|v| v.extend([1.0, 2.0]));
        let (second, ()) = buffers.fill(|v| v.push(3.0));
        assert!(!Arc::ptr_eq(&first, &second), "a viewed buffer is not handed out again");
        assert_eq!((first.as_slice(), second.as_slice()), ([1.0, 2.0].as_slice(), [3.0].as_slice()));
        let address = Arc::as_ptr(&first);
        drop(first);
        let (third, ()) = buffers.fill(|v| {
            v.clear();
            v.push(4.0)
        });
        assert_eq!(Arc::as_ptr(&third), address, "the freed buffer is filled again");
        assert_eq!(third.as_slice(), [4.0]);
        assert_eq!(buffers.buffers.len(), 2);
    }
}
