//! Shard owners sum the micro-batches' gradients and send the mean back.

use super::forward::GradPart;
use super::{from_bytes, to_bytes};
use crate::accumulate::PerTime;
use crate::samples::StepInfo;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// A shard of the step's mean gradient, addressed to one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MeanShard {
    pub at: StepInfo,
    pub target: u32,
    pub shard: u32,
    pub samples: u32,
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
    /// Loss terms averaged over the step's samples (shard 0 only).
    pub terms: Vec<(String, f64)>,
}

/// The mean of the micro-batches' shards: summed in micro-batch order, in
/// f64, so that the result is the same whichever workers computed them,
/// then divided by the step's sample count.
pub(super) fn mean_of(mut parts: Vec<GradPart>) -> (u32, Vec<f32>, Vec<(String, f64)>) {
    parts.sort_by_key(|p| p.part);
    let samples: u32 = parts.iter().map(|p| p.samples).sum();
    let mut sum: Vec<f64> = Vec::new();
    let mut terms: Vec<(String, f64)> = Vec::new();
    for p in &parts {
        let values = from_bytes(&p.values);
        if sum.is_empty() {
            sum = values.iter().map(|&v| f64::from(v)).collect();
        } else {
            for (a, b) in sum.iter_mut().zip(&values) {
                *a += f64::from(*b);
            }
        }
        for (name, v) in &p.terms {
            match terms.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += v,
                None => terms.push((name.clone(), *v)),
            }
        }
    }
    let n = f64::from(samples.max(1));
    let mean = sum.iter().map(|v| (v / n) as f32).collect();
    let terms = terms.into_iter().map(|(k, v)| (k, v / n)).collect();
    (samples, mean, terms)
}

pub(super) fn reduce<'s>(parts: Stream<'s, u64, Vec<GradPart>>) -> Stream<'s, u64, Vec<MeanShard>> {
    let peers = parts.scope().peers();
    parts.unary_frontier::<CapacityContainerBuilder<Vec<MeanShard>>, _, _, _>(
        Exchange::new(|g: &GradPart| u64::from(g.shard)),
        "ReduceGradients",
        move |_cap, _info| {
            // Per step: the shards this worker owns, by shard index.
            let mut open: PerTime<Vec<GradPart>> = PerTime::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| open.entry(&cap).append(data));
                for (cap, parts) in open.drain_complete(frontier) {
                    let mut by_shard: std::collections::BTreeMap<u32, Vec<GradPart>> = Default::default();
                    for p in parts {
                        by_shard.entry(p.shard).or_default().push(p);
                    }
                    let mut session = output.session(&cap);
                    for (shard, parts) in by_shard {
                        let at = parts[0].at;
                        let (samples, mean, terms) = mean_of(parts);
                        let values = to_bytes(&mean);
                        for target in 0..peers {
                            session.give(MeanShard {
                                at,
                                target: target as u32,
                                shard,
                                samples,
                                values: values.clone(),
                                terms: terms.clone(),
                            });
                        }
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
            shard: 0,
            samples,
            values: to_bytes(values),
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
        assert_eq!(m1, m2);
        assert_eq!(t1, t2);
        assert_eq!(t1, vec![("total".to_string(), 2.0)]);
        // f64 sums: 1e8 + 1 - 1e8 keeps the 1.
        assert_eq!(m1[0], (1.0f64 / 6.0) as f32);
    }
}
