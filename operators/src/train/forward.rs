//! Forward and backward on this worker's micro-batches of each step.

use super::{chunk_range, chunks, Shared, TrainConfig};
use crate::accumulate::PerTime;
use crate::bulk::{BulkRecord, Floats, Unbatched};
use crate::run::{catch_panic, RunShared};
use crate::samples::{Sample, StepInfo};
use crate::stats::RunStats;
use locvtp_model::loss::Draws;
use locvtp_model::train::{forward_losses, zero_gradients};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tch::Tensor;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// One chunk of one micro-batch's gradient, multiplied by the micro-batch's
/// sample count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradPart {
    pub at: StepInfo,
    pub part: u32,
    pub chunk: u32,
    pub samples: u32,
    pub values: Floats,
    /// Loss terms times the sample count (chunk 0 only).
    pub terms: Vec<(String, f64)>,
}

impl BulkRecord for GradPart {
    type Header = (StepInfo, u32, u32, u32, Vec<(String, f64)>);
    fn header(&self) -> Self::Header {
        (self.at, self.part, self.chunk, self.samples, self.terms.clone())
    }
    fn payload(&self) -> &Floats {
        &self.values
    }
    fn assemble((at, part, chunk, samples, terms): Self::Header, values: Floats) -> GradPart {
        GradPart { at, part, chunk, samples, values, terms }
    }
}

/// libtorch's random generator (dropout) is process-wide: a worker seeds it
/// and runs its forward and backward pass under this lock, so each
/// micro-batch's dropout masks are a function of (seed, step, part)
/// whatever the other workers of the process do.
static FORWARD_LOCK: Mutex<()> = Mutex::new(());

/// The seed of a micro-batch's draws and dropout: a function of the step
/// and the part only, not of the worker that computes it.
fn draw_seed(seed: u64, step: u64, part: u64) -> u64 {
    seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ part.wrapping_mul(0xd1b5_4a32_d192_ed03)
}

pub(super) fn forward<'s>(
    samples: Stream<'s, u64, Vec<Sample>>,
    shared: Rc<RefCell<Shared>>,
    cfg: TrainConfig,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Unbatched<GradPart>> {
    let worker = samples.scope().worker();
    let parts = cfg.micro_batches.max(1) as u64;
    samples.unary_frontier::<CapacityContainerBuilder<Unbatched<GradPart>>, _, _, _>(
        Exchange::new(move |s: &Sample| u64::from(s.slot) % parts),
        "TrainForward",
        move |_cap, info| {
            shared.borrow_mut().forward_activator = Some(worker.activator_for(info.address.clone()));
            let mut pending: PerTime<Vec<Sample>> = PerTime::default();
            let mut failed = false;
            move |(input, frontier), output| {
                input.for_each(|cap, data| pending.entry(&cap).append(data));
                if failed {
                    while pending.pop_first().is_some() {}
                    return;
                }
                // The next step runs once its samples are complete and the
                // step before it has been applied.
                while let Some((step, _)) = pending.first() {
                    if frontier.less_equal(&step) || shared.borrow().next_step < step {
                        break;
                    }
                    let (cap, local) = pending.pop_first().expect("first exists");
                    if local.is_empty() {
                        continue;
                    }
                    // libtorch's errors (out of memory, a shape the model
                    // cannot take) are panics in tch: they fail the run
                    // with the step, like the errors run_step returns.
                    let result = catch_panic(|| run_step(&shared, &cfg, &run, local))
                        .unwrap_or_else(|panic| Err(anyhow::anyhow!("forward and backward: {panic}")));
                    match result {
                        Ok(grads) => output.session(&cap).give_iterator(grads.into_iter()),
                        Err(e) => {
                            run.fail(&cfg.stage, format!("step {}: {e:#}", step + 1));
                            failed = true;
                            return;
                        }
                    }
                }
            }
        },
    )
}

/// Forward and backward of this worker's samples of one step, one loss per
/// micro-batch; returns every micro-batch's gradient in chunks.
fn run_step(
    shared: &Rc<RefCell<Shared>>,
    cfg: &TrainConfig,
    run: &RunShared,
    mut local: Vec<Sample>,
) -> anyhow::Result<Vec<GradPart>> {
    let parts = cfg.micro_batches.max(1) as u64;
    let mut sh = shared.borrow_mut();
    let began = Instant::now();
    let waited = began.saturating_duration_since(sh.last_apply);
    sh.wait += waited;
    local.sort_by_key(|s| s.slot);
    let at = local[0].at;
    let step = at.step;
    let mut by_part: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in &local {
        by_part.entry(u64::from(s.slot) % parts).or_default().push(s);
    }
    let (t, f, size) = (cfg.num_segments as i64, cfg.frames_per_segment as i64, cfg.frame_size as i64);
    let mut out = Vec::new();
    let mut text_forwards = 0;
    for (part, samples) in by_part {
        let m = samples.len();
        let mut pixels = Vec::with_capacity(m * samples[0].pixels.len());
        for s in &samples {
            pixels.extend_from_slice(&s.pixels);
        }
        let expected = (m as i64 * t * f * size * size * 3) as usize;
        if pixels.len() != expected {
            anyhow::bail!(
                "samples of {} bytes, the model takes {t} segments of {f} frames of {size}x{size}",
                pixels.len() / m
            );
        }
        let clips = Tensor::from_slice(&pixels).reshape([m as i64, t, f, size, size, 3]);
        let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
        let before = sh.replica.text.forwards;
        let text = sh.replica.text.batch(&texts)?;
        text_forwards += sh.replica.text.forwards - before;
        let seed = draw_seed(cfg.seed, step, part);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let draws = Draws::sample(m as i64, t, &text.word_lens, &mut rng);
        let (flat, terms) = {
            let _guard = FORWARD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(seed as i64);
            let rep = &sh.replica;
            zero_gradients(&rep.model);
            let device = rep.model.device();
            let terms = locvtp_model::amp::bf16(device, cfg.precision.autocast(device), || {
                forward_losses(&rep.model, &clips, &text, &draws, &cfg.weights)
            });
            terms.total.backward();
            (sh.layout.flatten(&rep.model, m as f64), terms.values())
        };
        let terms: Vec<(String, f64)> = terms.into_iter().map(|(k, v)| (k.to_string(), v * m as f64)).collect();
        // The chunks are views of one shared vector: no copies before the
        // exchange writes them out.
        let flat = Arc::new(flat);
        for c in 0..chunks(flat.len()) {
            out.push(GradPart {
                at,
                part: part as u32,
                chunk: c as u32,
                samples: m as u32,
                values: Floats::view(&flat, chunk_range(flat.len(), c)),
                terms: if c == 0 { terms.clone() } else { Vec::new() },
            });
        }
    }
    RunStats::add(&run.stats.clips_encoded, local.len() as u64);
    RunStats::add(&run.stats.text_forwards, text_forwards);
    sh.busy += began.elapsed();
    Ok(out)
}
