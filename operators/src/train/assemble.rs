//! Every worker gathers a step's mean gradient from its shards.
//!
//! The shards are not copied into one vector: the optimiser step reads
//! each where it arrived (in the bytes of its message, or in the owner's
//! sum when this worker owns the chunk), in chunk order. A 250 MB gradient
//! copied once more every step is a pass over memory that
//! torch.distributed's in-place all-reduce does not make.

use super::chunks;
use super::reduce::MeanShard;
use crate::samples::StepInfo;
use std::borrow::Cow;

/// A complete step's mean gradient, as its chunks.
#[derive(Debug)]
pub struct AssembledMean {
    pub at: StepInfo,
    pub samples: u32,
    /// Loss terms averaged over the step's samples.
    pub terms: Vec<(String, f64)>,
    shards: Vec<MeanShard>,
}

impl AssembledMean {
    /// Orders a step's shards by chunk and checks that they make a gradient
    /// of `total` floats: every chunk once, each of its length.
    pub fn gather(mut shards: Vec<MeanShard>, total: usize) -> Result<AssembledMean, String> {
        shards.sort_by_key(|s| s.chunk);
        let expected = chunks(total);
        let floats: usize = shards.iter().map(|s| s.values.len()).sum();
        let in_order = shards.iter().enumerate().all(|(i, s)| s.chunk as usize == i);
        if shards.len() != expected || floats != total || !in_order {
            return Err(format!(
                "a mean gradient of {floats} values in {} chunks, expected {total} in {expected}",
                shards.len()
            ));
        }
        let lengths_fit = shards.iter().enumerate().all(|(i, s)| s.values.len() == super::chunk_range(total, i).len());
        if !lengths_fit {
            return Err("a mean gradient whose chunks have the wrong lengths".to_string());
        }
        let first = &shards[0];
        Ok(AssembledMean { at: first.at, samples: first.samples, terms: first.terms.clone(), shards })
    }

    /// The chunks' values, in order: together, the flat mean gradient.
    pub fn pieces(&self) -> Vec<Cow<'_, [f32]>> {
        self.shards.iter().map(|s| s.values.as_f32()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk::Floats;
    use crate::train::{chunk_range, CHUNK_FLOATS};

    fn shard(chunk: usize, total: usize, of: &[f32]) -> MeanShard {
        MeanShard {
            at: StepInfo { step: 3, epoch: 0, epoch_end: false, steps_total: 9 },
            target: 0,
            chunk: chunk as u32,
            samples: 4,
            values: Floats::owned(of[chunk_range(total, chunk)].to_vec()),
            terms: if chunk == 0 { vec![("total".into(), 0.5)] } else { Vec::new() },
        }
    }

    #[test]
    fn shards_in_any_order_make_the_gradient() {
        let total = 2 * CHUNK_FLOATS + 5;
        let gradient: Vec<f32> = (0..total).map(|i| i as f32 * 0.25).collect();
        let shards = (0..chunks(total)).rev().map(|c| shard(c, total, &gradient)).collect();
        let mean = AssembledMean::gather(shards, total).unwrap();
        assert_eq!(mean.pieces().concat(), gradient);
        assert_eq!((mean.at.step, mean.samples), (3, 4));
        assert_eq!(mean.terms, vec![("total".to_string(), 0.5)], "the loss terms travel with chunk 0");
    }

    #[test]
    fn a_missing_repeated_or_misfit_chunk_is_an_error() {
        let total = 2 * CHUNK_FLOATS;
        let gradient = vec![1.0f32; total];
        let missing = vec![shard(0, total, &gradient)];
        let err = AssembledMean::gather(missing, total).unwrap_err();
        assert_eq!(err, format!("a mean gradient of {CHUNK_FLOATS} values in 1 chunks, expected {total} in 2"));
        let repeated = [0, 0, 1].into_iter().map(|c| shard(c, total, &gradient)).collect();
        assert!(AssembledMean::gather(repeated, total).is_err());
        let twice = [0, 0].into_iter().map(|c| shard(c, total, &gradient)).collect();
        assert!(AssembledMean::gather(twice, total).is_err(), "the right size, but chunk 1 is missing");
        let mut misfit = vec![shard(0, total, &gradient), shard(1, total, &gradient)];
        misfit[0].values = Floats::owned(vec![1.0; CHUNK_FLOATS - 3]);
        misfit[1].values = Floats::owned(vec![1.0; CHUNK_FLOATS + 3]);
        assert!(AssembledMean::gather(misfit, total).unwrap_err().contains("wrong lengths"));
        assert!(AssembledMean::gather(Vec::new(), total).is_err(), "no shard at all");
    }
}
