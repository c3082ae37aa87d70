//! The pre-training operators. Timestamps are global optimiser steps.
//!
//! * `decode_samples`: one decode pass per video per epoch serves every
//!   caption clip of that video scheduled in the epoch: the TSN frame
//!   indices of all its clips are drawn first, the pass keeps only those
//!   frames, and each training sample leaves at its own step.
//! * `train`: data-parallel training. Each worker holds a replica, runs
//!   forward and backward on its share of a step's samples once the
//!   frontier says the step's samples are complete, and sends its
//!   gradients (weighted by its sample count) in shards through timely
//!   exchange; shard owners sum them and broadcast the average back; every
//!   replica then takes the same Adam step. The next forward waits until
//!   the previous step has been applied.

use crate::messages::{ItemError, VideoItem};
use crate::stats::RunStats;
use crossbeam_channel::bounded;
use locvtp_media::decode::{decode_video, DecodeOptions};
use locvtp_media::sampling::{caption_frame_range, segment_frame_indices};
use locvtp_model::loss::{Draws, LossWeights};
use locvtp_model::train::{
    forward_losses, gradients, parameter_names, set_gradients, zero_gradients, Adam, MultiStepLr,
};
use locvtp_model::LocVtp;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// One caption clip scheduled into a step of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleJob {
    pub step: u64,
    /// Position in the step's global batch; decides the worker.
    pub slot: u32,
    pub epoch: u32,
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    /// Seeds the clip's segment offsets for this epoch.
    pub seed: u64,
}

/// A video to decode once in an epoch, with every clip it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoJob {
    pub item: VideoItem,
    pub fps: f64,
    pub clips: Vec<SampleJob>,
}

/// A training sample: `T*F` frames `[T*F, S, S, 3]` u8 and its caption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub step: u64,
    pub slot: u32,
    pub epoch: u32,
    pub video: Arc<str>,
    pub text: String,
    pub pixels: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SampleMsg {
    Sample(Sample),
    Failed { slot: u32, error: ItemError },
}

#[derive(Debug, Clone, Copy)]
pub struct SampleConfig {
    pub decode: DecodeOptions,
    pub threads: usize,
    pub queue: usize,
    pub num_segments: usize,
    pub frames_per_segment: usize,
}

fn gather_samples(job: &VideoJob, cfg: &SampleConfig, stats: &RunStats) -> Result<Vec<Sample>, String> {
    RunStats::add(&stats.decode_passes, 1);
    let (t, f) = (cfg.num_segments, cfg.frames_per_segment);
    let plans: Vec<Vec<i64>> = job
        .clips
        .iter()
        .map(|c| {
            let (start, end) = caption_frame_range(c.start_s, c.end_s, job.fps);
            let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
            segment_frame_indices(start, end.max(start), t, f, &mut rng)
        })
        .collect();
    let needed: BTreeSet<u64> = plans.iter().flatten().map(|&i| i.max(0) as u64).collect();
    let last_needed = needed.last().copied().unwrap_or(0);
    let mut kept: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut last_frame: Option<(u64, Vec<u8>)> = None;
    let summary = decode_video(&job.item.path, &cfg.decode, |chunk| {
        RunStats::add(&stats.frames_decoded, chunk.len() as u64);
        for i in 0..chunk.len() {
            let index = chunk.first_index + i as u64;
            if needed.contains(&index) {
                kept.insert(index, chunk.frame(i).to_vec());
            }
            if index == last_needed || i + 1 == chunk.len() {
                last_frame = Some((index, chunk.frame(i).to_vec()));
            }
        }
        // Frames after the last one any clip needs are not decoded.
        if chunk.first_index + chunk.len() as u64 > last_needed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .map_err(|e| format!("{e:#}"))?;
    let (last_index, last_pixels) = last_frame.ok_or("no frame decoded")?;
    let frame_bytes = last_pixels.len();
    let mut out = Vec::with_capacity(job.clips.len());
    for (clip, plan) in job.clips.iter().zip(&plans) {
        let mut pixels = Vec::with_capacity(plan.len() * frame_bytes);
        for &i in plan {
            // Indices past the real end (metadata that overstates the
            // frame count) repeat the last decoded frame.
            let i = (i.max(0) as u64).min(last_index);
            pixels.extend_from_slice(kept.get(&i).unwrap_or(&last_pixels));
        }
        out.push(Sample {
            step: clip.step,
            slot: clip.slot,
            epoch: clip.epoch,
            video: job.item.id.clone(),
            text: clip.text.clone(),
            pixels,
        });
    }
    let _ = summary;
    Ok(out)
}

/// Decodes each scheduled video once and emits its samples at their steps.
pub fn decode_samples<'s>(
    jobs: Stream<'s, u64, Vec<VideoJob>>,
    cfg: SampleConfig,
    stats: Arc<RunStats>,
) -> Stream<'s, u64, Vec<SampleMsg>> {
    let worker = jobs.scope().worker();
    let pact = Exchange::new(|j: &VideoJob| crate::shard_of(&j.item.id));
    jobs.unary_frontier(pact, "DecodeSamples", move |_cap, info| {
        let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
        // Jobs are keyed by a sequence number: several videos may first be
        // needed at the same step.
        let (job_tx, job_rx) = bounded::<(u64, VideoJob)>(cfg.threads.max(1));
        let (res_tx, res_rx) = bounded::<(u64, Result<Vec<Sample>, (VideoJob, String)>)>(cfg.queue.max(1));
        for i in 0..cfg.threads.max(1) {
            let (job_rx, res_tx, activator, stats) = (job_rx.clone(), res_tx.clone(), activator.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("sample-decode-{i}"))
                .spawn(move || {
                    for (t, job) in job_rx {
                        let result = gather_samples(&job, &cfg, &stats).map_err(|e| (job, e));
                        if res_tx.send((t, result)).is_err() {
                            return;
                        }
                        let _ = activator.activate();
                    }
                })
                .expect("spawn decoder thread");
        }
        drop(res_tx);
        let mut caps: HashMap<u64, Capability<u64>> = HashMap::new();
        let mut backlog: VecDeque<(u64, VideoJob)> = VecDeque::new();
        let mut next_id = 0u64;
        move |(input, _frontier), output| {
            input.for_each(|cap, data| {
                for job in data.drain(..) {
                    caps.insert(next_id, cap.retain_least(0).expect("steps are totally ordered"));
                    backlog.push_back((next_id, job));
                    next_id += 1;
                }
            });
            crate::feed(&mut backlog, &job_tx);
            while let Ok((t, result)) = res_rx.try_recv() {
                let cap = caps.remove(&t).expect("a capability is held for every job in flight");
                match result {
                    Ok(samples) => {
                        for s in samples {
                            let at = cap.delayed(&s.step);
                            output.session(&at).give(SampleMsg::Sample(s));
                        }
                    }
                    Err((job, reason)) => {
                        for c in &job.clips {
                            let at = cap.delayed(&c.step);
                            let error = ItemError {
                                video_id: job.item.id.to_string(),
                                stage: "decode".into(),
                                reason: reason.clone(),
                            };
                            output.session(&at).give(SampleMsg::Failed { slot: c.slot, error });
                        }
                    }
                }
            }
        }
    })
}

/// Gradients of one worker for one shard of the parameter vector, already
/// multiplied by the worker's sample count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradShard {
    pub shard: u32,
    pub samples: u32,
    pub values: Vec<f32>,
    /// Loss terms times the sample count (shard 0 only).
    pub terms: Vec<(String, f64)>,
}

/// A shard of the averaged gradient, addressed to one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AvgShard {
    pub target: u32,
    pub shard: u32,
    pub samples: u32,
    pub values: Vec<f32>,
    pub terms: Vec<(String, f64)>,
}

/// What one step did; the metrics and checkpoint sinks read these.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u64,
    pub epoch: u32,
    pub lr: f64,
    pub samples: u32,
    pub terms: Vec<(String, f64)>,
    pub samples_per_s: f64,
    pub data_wait_share: f64,
    /// Captions run through the text encoder so far by this process; it
    /// stops growing once every caption is cached.
    pub text_encoder_forwards: u64,
    pub worker: u32,
    /// Sum of every parameter tensor after the step: equal on all replicas.
    pub checksum: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub weights: LossWeights,
    pub schedule: MultiStepLr,
    pub seed: u64,
    pub num_segments: usize,
    pub frames_per_segment: usize,
    pub frame_size: usize,
    /// Steps per epoch, to name the epoch of a step.
    pub steps_per_epoch: u64,
    /// Steps already taken by the checkpoint this run resumed from.
    pub first_step: u64,
    /// Parts of a global batch (slot % micro_batches), each a separate
    /// loss computation; part `m` runs on worker `m % workers`.
    pub micro_batches: usize,
    /// Where items that could not be used are reported (videos that fail to
    /// decode lose their samples; the step goes on without them).
    pub errors: Arc<Mutex<Vec<ItemError>>>,
    pub precision: locvtp_model::amp::Precision,
}

/// One replica, its optimiser and frozen text encoder (behind its cache).
pub struct Replica {
    pub model: LocVtp,
    pub adam: Adam,
    pub text: crate::text_cache::TextCache,
}

/// libtorch's random generator (dropout) is process-wide: a worker seeds it
/// and runs its forward and backward pass under this lock, so each step's
/// dropout masks are a function of (seed, step, worker) whatever the other
/// workers of the process do.
static FORWARD_LOCK: Mutex<()> = Mutex::new(());

struct Shared {
    replica: Replica,
    /// Every step below this one has been applied.
    next_step: u64,
    forward_activator: Option<timely::scheduling::Activator>,
    last_apply: Instant,
    wait: Duration,
    busy: Duration,
}

fn flatten(grads: &[Tensor], scale: f64) -> Vec<f32> {
    let flat = Tensor::cat(&grads.iter().map(|g| g.flatten(0, -1).to_kind(Kind::Float)).collect::<Vec<_>>(), 0) * scale;
    let flat = flat.to_device(tch::Device::Cpu).contiguous();
    let n = flat.numel();
    let mut v = vec![0f32; n];
    flat.copy_data(&mut v, n);
    v
}

fn shard_range(total: usize, shards: usize, k: usize) -> std::ops::Range<usize> {
    let per = total.div_ceil(shards.max(1));
    (k * per).min(total)..((k + 1) * per).min(total)
}

/// Called on worker 0 after every step, with the replica as the step left it
/// (metrics, checkpoints).
pub type OnStep = Box<dyn FnMut(&Replica, &StepReport)>;

/// Trains on `samples`; emits one report per step (on worker 0).
pub fn train<'s>(
    samples: Stream<'s, u64, Vec<SampleMsg>>,
    cfg: TrainConfig,
    replica: Replica,
    stats: Arc<RunStats>,
    on_step: OnStep,
) -> Stream<'s, u64, Vec<StepReport>> {
    let scope = samples.scope();
    let worker = scope.worker();
    let index = worker.index();
    let peers = worker.peers();
    let shared = Rc::new(RefCell::new(Shared {
        replica,
        next_step: cfg.first_step,
        forward_activator: None,
        last_apply: Instant::now(),
        wait: Duration::ZERO,
        busy: Duration::ZERO,
    }));

    let apply_stats = stats.clone();
    // Forward and backward on this worker's share of each step.
    let fwd_shared = shared.clone();
    let fwd_cfg = cfg.clone();
    let parts = cfg.micro_batches.max(1) as u64;
    let grads = samples.unary_frontier(
        Exchange::new(move |m: &SampleMsg| match m {
            SampleMsg::Sample(s) => u64::from(s.slot) % parts,
            SampleMsg::Failed { slot, .. } => u64::from(*slot) % parts,
        }),
        "TrainForward",
        move |_cap, info| {
            fwd_shared.borrow_mut().forward_activator = Some(worker.activator_for(info.address.clone()));
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Sample>)> = BTreeMap::new();
            let shared = fwd_shared;
            let cfg = fwd_cfg;
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let t = *cap.least().expect("steps are totally ordered");
                    let entry =
                        pending.entry(t).or_insert_with(|| (cap.retain_least(0).expect("totally ordered"), Vec::new()));
                    for msg in data.drain(..) {
                        match msg {
                            SampleMsg::Sample(s) => entry.1.push(s),
                            SampleMsg::Failed { error, .. } => {
                                let mut errors = cfg.errors.lock().unwrap_or_else(|e| e.into_inner());
                                if !errors.iter().any(|e| e.video_id == error.video_id && e.stage == error.stage) {
                                    tracing::warn!("{}: {} failed: {}", error.video_id, error.stage, error.reason);
                                    errors.push(error);
                                }
                            }
                        }
                    }
                });
                while let Some((&step, _)) = pending.iter().next() {
                    if frontier.less_equal(&step) || shared.borrow().next_step < step {
                        break;
                    }
                    let (cap, mut local) = pending.remove(&step).expect("first key");
                    if local.is_empty() {
                        continue;
                    }
                    let mut sh = shared.borrow_mut();
                    let began = Instant::now();
                    let waited = began.saturating_duration_since(sh.last_apply);
                    sh.wait += waited;
                    local.sort_by_key(|s| s.slot);
                    let n = local.len();
                    let mut by_part: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
                    for s in &local {
                        by_part.entry(u64::from(s.slot) % parts).or_default().push(s);
                    }
                    let (t, f, size) = (cfg.num_segments as i64, cfg.frames_per_segment as i64, cfg.frame_size as i64);
                    let mut flat: Vec<f32> = Vec::new();
                    let mut terms: Vec<(String, f64)> = Vec::new();
                    let mut text_forwards = 0;
                    for (part, samples) in by_part {
                        let m = samples.len();
                        let mut pixels = Vec::with_capacity(m * samples[0].pixels.len());
                        for s in &samples {
                            pixels.extend_from_slice(&s.pixels);
                        }
                        let clips = Tensor::from_slice(&pixels).reshape([m as i64, t, f, size, size, 3]);
                        let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
                        let before = sh.replica.text.forwards;
                        let text =
                            sh.replica.text.batch(&texts).unwrap_or_else(|e| panic!("text encoder failed: {e:#}"));
                        text_forwards += sh.replica.text.forwards - before;
                        let rep = &sh.replica;
                        // Draws and dropout depend on (seed, step, part)
                        // only, not on which worker computes the part.
                        let draw_seed = cfg.seed
                            ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            ^ part.wrapping_mul(0xd1b5_4a32_d192_ed03);
                        let mut rng = ChaCha8Rng::seed_from_u64(draw_seed);
                        let draws = Draws::sample(m as i64, t, &text.word_lens, &mut rng);
                        let _guard = FORWARD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                        tch::manual_seed(draw_seed as i64);
                        zero_gradients(&rep.model);
                        let device = rep.model.device();
                        let part_terms = locvtp_model::amp::bf16(device, cfg.precision.autocast(device), || {
                            forward_losses(&rep.model, &clips, &text, &draws, &cfg.weights)
                        });
                        part_terms.total.backward();
                        let g = flatten(&gradients(&rep.model), m as f64);
                        if flat.is_empty() {
                            flat = g;
                        } else {
                            for (a, b) in flat.iter_mut().zip(&g) {
                                *a += b;
                            }
                        }
                        for (k, v) in part_terms.values() {
                            match terms.iter_mut().find(|(name, _)| name == k) {
                                Some((_, total)) => *total += v * m as f64,
                                None => terms.push((k.to_string(), v * m as f64)),
                            }
                        }
                    }
                    RunStats::add(&stats.clips_encoded, n as u64);
                    RunStats::add(&stats.text_forwards, text_forwards);
                    let mut session = output.session(&cap);
                    for k in 0..peers {
                        let range = shard_range(flat.len(), peers, k);
                        session.give(GradShard {
                            shard: k as u32,
                            samples: n as u32,
                            values: flat[range].to_vec(),
                            terms: if k == 0 { terms.clone() } else { Vec::new() },
                        });
                    }
                    sh.busy += began.elapsed();
                }
            }
        },
    );

    // Shard owners sum the workers' contributions and broadcast the mean.
    let averaged = grads.unary_frontier(
        Exchange::new(|g: &GradShard| u64::from(g.shard)),
        "ReduceGradients",
        move |_cap, _info| {
            let mut acc: BTreeMap<u64, (Capability<u64>, Option<GradShard>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let t = *cap.least().expect("totally ordered");
                    let entry = acc.entry(t).or_insert_with(|| (cap.retain_least(0).expect("totally ordered"), None));
                    for g in data.drain(..) {
                        match &mut entry.1 {
                            None => entry.1 = Some(g),
                            Some(sum) => {
                                sum.samples += g.samples;
                                for (a, b) in sum.values.iter_mut().zip(&g.values) {
                                    *a += b;
                                }
                                for (name, v) in g.terms {
                                    match sum.terms.iter_mut().find(|(n, _)| *n == name) {
                                        Some((_, total)) => *total += v,
                                        None => sum.terms.push((name, v)),
                                    }
                                }
                            }
                        }
                    }
                });
                let done: Vec<u64> = acc.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                for t in done {
                    let (cap, sum) = acc.remove(&t).expect("listed");
                    let Some(sum) = sum else { continue };
                    let n = sum.samples.max(1) as f32;
                    let values: Vec<f32> = sum.values.iter().map(|v| v / n).collect();
                    let terms: Vec<(String, f64)> =
                        sum.terms.iter().map(|(k, v)| (k.clone(), v / f64::from(n))).collect();
                    let mut session = output.session(&cap);
                    for target in 0..peers {
                        session.give(AvgShard {
                            target: target as u32,
                            shard: sum.shard,
                            samples: sum.samples,
                            values: values.clone(),
                            terms: terms.clone(),
                        });
                    }
                }
            }
        },
    );

    // Every replica applies the same averaged gradient.
    let mut on_step = on_step;
    averaged
        .unary_frontier(Exchange::new(|a: &AvgShard| u64::from(a.target)), "ApplyGradients", move |_cap, _info| {
            let mut acc: BTreeMap<u64, (Capability<u64>, Vec<AvgShard>)> = BTreeMap::new();
            let shapes: Vec<Vec<i64>> = {
                let sh = shared.borrow();
                let vars = sh.replica.model.vs.variables();
                parameter_names(&sh.replica.model).iter().map(|n| vars[n].size()).collect()
            };
            let mut last_report = Instant::now();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let t = *cap.least().expect("totally ordered");
                    let entry =
                        acc.entry(t).or_insert_with(|| (cap.retain_least(0).expect("totally ordered"), Vec::new()));
                    entry.1.append(data);
                });
                let done: Vec<u64> = acc.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                for step in done {
                    let (cap, mut shards) = acc.remove(&step).expect("listed");
                    shards.sort_by_key(|s| s.shard);
                    let flat: Vec<f32> = shards.iter().flat_map(|s| s.values.iter().copied()).collect();
                    let mut sh = shared.borrow_mut();
                    let began = Instant::now();
                    let device = sh.replica.model.device();
                    let mut offset = 0usize;
                    let grads: Vec<Tensor> = shapes
                        .iter()
                        .map(|shape| {
                            let n: i64 = shape.iter().product();
                            let t = Tensor::from_slice(&flat[offset..offset + n as usize])
                                .reshape(shape.as_slice())
                                .to_device(device);
                            offset += n as usize;
                            t
                        })
                        .collect();
                    let epoch = (step / cfg.steps_per_epoch.max(1)) as u32;
                    let lr = cfg.schedule.lr_at(i64::from(epoch));
                    let rep = &mut sh.replica;
                    set_gradients(&rep.model, &grads);
                    rep.adam.step(&rep.model, lr);
                    sh.busy += began.elapsed();
                    let samples = shards.first().map(|s| s.samples).unwrap_or(0);
                    let (wait, busy) = (sh.wait.as_secs_f64(), sh.busy.as_secs_f64());
                    let report = StepReport {
                        step,
                        epoch,
                        lr,
                        samples,
                        terms: shards.first().map(|s| s.terms.clone()).unwrap_or_default(),
                        samples_per_s: f64::from(samples) / last_report.elapsed().as_secs_f64().max(1e-9),
                        data_wait_share: if wait + busy > 0.0 { wait / (wait + busy) } else { 0.0 },
                        text_encoder_forwards: RunStats::get(&apply_stats.text_forwards),
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
                        on_step(&sh.replica, &report);
                    }
                    output.session(&cap).give(report);
                    sh.next_step = step + 1;
                    sh.last_apply = Instant::now();
                }
                // Steps without any sample anywhere never reach this operator;
                // the frontier still says they are over.
                let mut sh = shared.borrow_mut();
                let floor = frontier.frontier().iter().next().copied().unwrap_or(u64::MAX);
                if floor > sh.next_step {
                    sh.next_step = floor;
                }
                if let Some(a) = &sh.forward_activator {
                    a.activate();
                }
            }
        })
        .unary_frontier(Exchange::new(|_: &StepReport| 0), "CheckReplicas", |_cap, _info| {
            // Every replica took the same step: worker 0 compares their
            // parameter checksums and stops the run at the first difference.
            let mut acc: BTreeMap<u64, (Capability<u64>, Vec<StepReport>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let t = *cap.least().expect("totally ordered");
                    let entry =
                        acc.entry(t).or_insert_with(|| (cap.retain_least(0).expect("totally ordered"), Vec::new()));
                    entry.1.append(data);
                });
                let done: Vec<u64> = acc.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                for t in done {
                    let (cap, mut reports) = acc.remove(&t).expect("listed");
                    reports.sort_by_key(|r| r.worker);
                    if let Some(bad) = reports.iter().find(|r| r.checksum != reports[0].checksum) {
                        panic!(
                            "replicas diverged at step {}: worker {} differs from worker {}",
                            t + 1,
                            bad.worker,
                            reports[0].worker
                        );
                    }
                    if let Some(first) = reports.into_iter().next() {
                        output.session(&cap).give(first);
                    }
                }
            }
        })
}
