//! Shard owners sum the micro-batches' gradients and send the mean back.

use super::forward::GradPart;
use crate::accumulate::PerTime;
use crate::samples::StepInfo;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// A chunk of the step's mean gradient, addressed to one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeanShard {
    pub at: StepInfo,
    pub target: u32,
    pub chunk: u32,
    pub samples: u32,
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
    /// Loss terms averaged over the step's samples (chunk 0 only).
    pub terms: Vec<(String, f64)>,
}

/// Adds `more` to `acc`, both little-endian f32 bytes.
fn add_into(acc: &mut [u8], more: &[u8]) {
    match (bytemuck::try_cast_slice_mut::<u8, f32>(acc), bytemuck::try_cast_slice::<u8, f32>(more)) {
        (Ok(a), Ok(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += y),
        _ => {
            for (x, y) in acc.chunks_exact_mut(4).zip(more.chunks_exact(4)) {
                let sum = f32::from_le_bytes(x.try_into().expect("4 bytes"))
                    + f32::from_le_bytes(y.try_into().expect("4 bytes"));
                x.copy_from_slice(&sum.to_le_bytes());
            }
        }
    }
}

/// Divides little-endian f32 bytes by `n`, in place.
fn divide(acc: &mut [u8], n: f32) {
    match bytemuck::try_cast_slice_mut::<u8, f32>(acc) {
        Ok(a) => a.iter_mut().for_each(|x| *x /= n),
        Err(_) => {
            for x in acc.chunks_exact_mut(4) {
                let v = f32::from_le_bytes(x.try_into().expect("4 bytes")) / n;
                x.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// The mean of the micro-batches' chunks: summed in micro-batch order (so
/// that the result is the same whichever workers computed them), then
/// divided by the step's sample count; in place, on the bytes as they
/// arrived.
pub(super) fn mean_of(mut parts: Vec<GradPart>) -> (u32, Vec<u8>, Vec<(String, f64)>) {
    parts.sort_by_key(|p| p.part);
    let samples: u32 = parts.iter().map(|p| p.samples).sum();
    let mut terms: Vec<(String, f64)> = Vec::new();
    let mut parts = parts.into_iter();
    let first = parts.next().expect("a chunk has a part");
    let mut sum = first.values;
    let mut add_terms = |list: Vec<(String, f64)>| {
        for (name, v) in list {
            match terms.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += v,
                None => terms.push((name, v)),
            }
        }
    };
    add_terms(first.terms);
    for p in parts {
        add_into(&mut sum, &p.values);
        add_terms(p.terms);
    }
    divide(&mut sum, samples.max(1) as f32);
    let n = f64::from(samples.max(1));
    let terms = terms.into_iter().map(|(k, v)| (k, v / n)).collect();
    (samples, sum, terms)
}

/// The mean of one chunk, sent to every worker: every target but the last
/// gets a copy, the last takes the buffer itself.
fn send_mean(parts: Vec<GradPart>, chunk: u32, peers: usize, mut give: impl FnMut(MeanShard)) {
    let at = parts[0].at;
    let (samples, values, terms) = mean_of(parts);
    let mut values = Some(values);
    for target in 0..peers {
        let values = if target + 1 == peers {
            values.take().expect("kept for the last target")
        } else {
            values.as_ref().expect("kept for the last target").clone()
        };
        give(MeanShard { at, target: target as u32, chunk, samples, values, terms: terms.clone() });
    }
}

/// Sums each chunk's micro-batches on the chunk's owner and sends the mean
/// to every worker. A chunk leaves as soon as its `expected` micro-batches
/// are in (so that sending means overlaps receiving the other chunks), or
/// once the frontier passes its step (a step whose micro-batches were not
/// all filled).
pub fn reduce<'s>(parts: Stream<'s, u64, Vec<GradPart>>, expected: usize) -> Stream<'s, u64, Vec<MeanShard>> {
    let peers = parts.scope().peers();
    parts.unary_frontier::<CapacityContainerBuilder<Vec<MeanShard>>, _, _, _>(
        Exchange::new(|g: &GradPart| u64::from(g.chunk)),
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
    use super::super::to_bytes;
    use super::*;

    fn part(part: u32, samples: u32, values: &[f32]) -> GradPart {
        GradPart {
            at: StepInfo { step: 0, epoch: 0, epoch_end: false, steps_total: 1 },
            part,
            chunk: 0,
            samples,
            values: to_bytes(values),
            terms: vec![("total".into(), f64::from(samples) * 2.0)],
        }
    }

    #[test]
    fn the_mean_does_not_depend_on_arrival_order() {
        use super::super::from_bytes;

        let a = part(0, 2, &[1e8, 1.0]);
        let b = part(1, 1, &[1.0, 3.0]);
        let c = part(2, 3, &[-1e8, 1e-8]);
        let (n, m1, t1) = mean_of(vec![a.clone(), b.clone(), c.clone()]);
        let (_, m2, t2) = mean_of(vec![c, a, b]);
        assert_eq!(n, 6);
        assert_eq!(m1, m2, "summed in part order whatever the arrival order");
        assert_eq!(t1, t2);
        assert_eq!(t1, vec![("total".to_string(), 2.0)]);
        let m = from_bytes(&m1);
        assert_eq!(m[1], (1.0f32 + 3.0 + 1e-8) / 6.0);
    }
}
