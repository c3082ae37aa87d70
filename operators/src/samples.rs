//! Training samples: caption clips become TSN samples (T segments of F
//! frames), decoded once per video and epoch. Timestamps are global
//! optimiser steps.
//!
//! * [`schedule`]: worker 0 gathers every video's caption clips; once they
//!   are all known it schedules each epoch (a seeded shuffle of all clips
//!   cut into global batches) and sends one job per video and epoch, at
//!   the first step that needs it, staying at most `lookahead` steps ahead
//!   of what training has finished.
//! * [`decode_samples`]: one decode pass per video and epoch serves every
//!   caption clip of that video scheduled in the epoch: the TSN frame
//!   indices of all its clips are drawn first, the pass keeps only those
//!   frames, and each sample leaves at its own step.

use crate::messages::{ErrorStage, ItemError, Reason, VideoCaptions, VideoItem};
use crate::run::RunShared;
use crate::stats::RunStats;
use crossbeam_channel::bounded;
use locvtp_media::decode::{decode_video, DecodeOptions};
use locvtp_media::sampling::{caption_frame_range, segment_frame_indices};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, Stream};

/// Where a step sits in its epoch; travels with every sample of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    pub step: u64,
    pub epoch: u32,
    /// The last step of its epoch.
    pub epoch_end: bool,
    /// Steps of the whole run (all epochs).
    pub steps_total: u64,
}

/// One caption clip scheduled into a step of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleJob {
    pub at: StepInfo,
    /// Position in the step's global batch; decides the micro-batch.
    pub slot: u32,
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
    pub at: StepInfo,
    pub slot: u32,
    pub video: Arc<str>,
    pub text: String,
    #[serde(with = "serde_bytes")]
    pub pixels: Vec<u8>,
}

/// How epochs are cut into steps.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub seed: u64,
    pub epochs: u32,
    /// Global batch size.
    pub batch_size: usize,
    /// Steps already taken by the checkpoint the run resumes from.
    pub first_step: u64,
    /// Steps scheduled ahead of the last finished one.
    pub lookahead: u64,
}

/// One caption clip of the training set.
#[derive(Debug, Clone)]
struct TrainClip {
    video: usize,
    start_s: f64,
    end_s: f64,
    text: String,
}

/// Epoch schedule: a seeded shuffle of all clips cut into global batches;
/// a last batch smaller than the number of workers is dropped so that every
/// worker has a share of every step. Returns `(clip, step in epoch, slot)`.
fn schedule_epoch(clips: usize, epoch: u32, batch: usize, peers: usize, seed: u64) -> Vec<(usize, u64, u32)> {
    let mut order: Vec<usize> = (0..clips).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (u64::from(epoch) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)));
    let usable = if !order.len().is_multiple_of(batch) && order.len() % batch < peers {
        order.len() - order.len() % batch
    } else {
        order.len()
    };
    order.truncate(usable);
    order.into_iter().enumerate().map(|(i, c)| (c, (i / batch) as u64, (i % batch) as u32)).collect()
}

/// Steps per epoch for `n` clips (see [`schedule_epoch`]).
pub fn steps_per_epoch(n: usize, batch: usize, peers: usize) -> u64 {
    let rem = n % batch;
    (n / batch + usize::from(rem != 0 && rem >= peers)) as u64
}

/// The jobs of one epoch, ordered by the step that first needs them.
fn epoch_jobs(
    videos: &[VideoCaptions],
    clips: &[TrainClip],
    epoch: u32,
    cfg: &ScheduleConfig,
    peers: usize,
) -> Vec<(u64, VideoJob)> {
    let batch = cfg.batch_size.max(1);
    let spe = steps_per_epoch(clips.len(), batch, peers).max(1);
    let mut per_video: BTreeMap<usize, Vec<SampleJob>> = BTreeMap::new();
    for (c, step_in_epoch, slot) in schedule_epoch(clips.len(), epoch, batch, peers, cfg.seed) {
        let step = u64::from(epoch) * spe + step_in_epoch;
        if step < cfg.first_step {
            continue;
        }
        let clip = &clips[c];
        per_video.entry(clip.video).or_default().push(SampleJob {
            at: StepInfo { step, epoch, epoch_end: step_in_epoch + 1 == spe, steps_total: spe * u64::from(cfg.epochs) },
            slot,
            start_s: clip.start_s,
            end_s: clip.end_s,
            text: clip.text.clone(),
            seed: cfg.seed ^ (step << 20) ^ u64::from(slot) ^ 0x5eed,
        });
    }
    let mut jobs: Vec<(u64, VideoJob)> = per_video
        .into_iter()
        .map(|(v, mut list)| {
            list.sort_by_key(|j| (j.at.step, j.slot));
            let meta = &videos[v].meta;
            (list[0].at.step, VideoJob { item: meta.video.clone(), fps: meta.fps(), clips: list })
        })
        .collect();
    jobs.sort_by(|(t, a), (u, b)| (t, &a.item.id).cmp(&(u, &b.item.id)));
    jobs
}

/// How long a schedule blocked by its look-ahead waits before looking at
/// training's progress again.
const RECHECK: Duration = Duration::from_millis(5);

/// Gathers the caption clips on worker 0 and, once all are known, emits
/// the epochs' decode jobs (see the module documentation). `flow` probes
/// the end of training. Records the caption clips and videos it schedules
/// as the output of stage `stage`.
pub fn schedule<'s>(
    captions: Stream<'s, u64, Vec<VideoCaptions>>,
    cfg: ScheduleConfig,
    flow: ProbeHandle<u64>,
    run: Arc<RunShared>,
    stage: String,
) -> Stream<'s, u64, Vec<VideoJob>> {
    let scope = captions.scope();
    let peers = scope.peers();
    captions.unary_frontier::<CapacityContainerBuilder<Vec<VideoJob>>, _, _, _>(
        Exchange::new(|_: &VideoCaptions| 0),
        "ScheduleEpochs",
        move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut cap = Some(cap);
            let mut videos: Vec<VideoCaptions> = Vec::new();
            let mut clips: Vec<TrainClip> = Vec::new();
            let mut pending: VecDeque<(u64, VideoJob)> = VecDeque::new();
            let mut next_epoch = 0u32;
            let mut started = false;
            move |(input, frontier), output| {
                input.for_each(|_cap, data| videos.append(data));
                if cap.is_none() || !frontier.is_empty() {
                    return;
                }
                if !started {
                    started = true;
                    // Every worker's captions are in: fix their order.
                    videos.sort_by(|a, b| a.meta.video.id.cmp(&b.meta.video.id));
                    videos.retain(|v| !v.clips.is_empty());
                    for (v, video) in videos.iter().enumerate() {
                        clips.extend(video.clips.iter().map(|c| TrainClip {
                            video: v,
                            start_s: c.start_s,
                            end_s: c.end_s,
                            text: c.text.clone(),
                        }));
                    }
                    run.record_output(
                        &stage,
                        serde_json::json!({ "caption_clips": clips.len(), "videos": videos.len() }),
                    );
                    tracing::info!("{} caption clips from {} videos", clips.len(), videos.len());
                }
                loop {
                    if run.stopping() {
                        if !pending.is_empty() || next_epoch < cfg.epochs {
                            run.mark_cut_short();
                        }
                        cap = None;
                        return;
                    }
                    if pending.is_empty() {
                        if next_epoch >= cfg.epochs || clips.is_empty() {
                            cap = None;
                            return;
                        }
                        pending.extend(epoch_jobs(&videos, &clips, next_epoch, &cfg, peers));
                        next_epoch += 1;
                        continue;
                    }
                    let t = pending[0].0;
                    // Nothing earlier than `t` will be sent: saying so first
                    // lets the steps before it complete while we wait.
                    let held = cap.as_mut().expect("checked above");
                    held.downgrade(&t);
                    if flow.less_than(&t.saturating_sub(cfg.lookahead)) {
                        activator.activate_after(RECHECK);
                        return;
                    }
                    let (_, job) = pending.pop_front().expect("not empty");
                    output.session(&*held).give(job);
                }
            }
        },
    )
}

fn gather_samples(job: &VideoJob, cfg: &SampleConfig, stats: &RunStats) -> anyhow::Result<Vec<Sample>> {
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
    decode_video(&job.item.path, &cfg.decode, |chunk| {
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
    })?;
    let (last_index, last_pixels) = last_frame.ok_or_else(|| anyhow::anyhow!("no frame decoded"))?;
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
        out.push(Sample { at: clip.at, slot: clip.slot, video: job.item.id.clone(), text: clip.text.clone(), pixels });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct SampleConfig {
    /// The stage's name in the graph, for messages.
    pub stage: String,
    pub decode: DecodeOptions,
    /// Videos decoded at once by this worker.
    pub threads: usize,
    /// Decoded videos buffered between the decoder threads and the dataflow.
    pub queue: usize,
    pub num_segments: usize,
    pub frames_per_segment: usize,
}

/// Decodes each scheduled video once and emits its samples at their steps.
/// A video that cannot be decoded is reported once (its steps go on
/// without its samples).
pub fn decode_samples<'s>(
    jobs: Stream<'s, u64, Vec<VideoJob>>,
    cfg: SampleConfig,
    run: Arc<RunShared>,
) -> (Stream<'s, u64, Vec<Sample>>, Stream<'s, u64, Vec<ItemError>>) {
    let worker = jobs.scope().worker();
    let pact = Exchange::new(|j: &VideoJob| crate::shard_of(&j.item.id));
    let results = jobs.unary_frontier::<CapacityContainerBuilder<Vec<Result<Sample, ItemError>>>, _, _, _>(
        pact,
        "DecodeSamples",
        move |_cap, info| {
            let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
            // Jobs are keyed by a sequence number: several videos may first be
            // needed at the same step.
            let (job_tx, job_rx) = bounded::<(u64, VideoJob)>(cfg.threads.max(1));
            type Decoded = anyhow::Result<Vec<Sample>>;
            let (res_tx, res_rx) = bounded::<(u64, VideoJob, Decoded)>(cfg.queue.max(1));
            for i in 0..cfg.threads.max(1) {
                let (job_rx, res_tx, activator, run, cfg) =
                    (job_rx.clone(), res_tx.clone(), activator.clone(), run.clone(), cfg.clone());
                std::thread::Builder::new()
                    .name(format!("sample-decode-{i}"))
                    .spawn(move || {
                        for (t, job) in job_rx {
                            let result = gather_samples(&job, &cfg, &run.stats);
                            if res_tx.send((t, job, result)).is_err() {
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
            let mut used: BTreeSet<Arc<str>> = BTreeSet::new();
            let mut reported: BTreeSet<Arc<str>> = BTreeSet::new();
            move |(input, _frontier), output| {
                input.for_each(|cap, data| {
                    for job in data.drain(..) {
                        caps.insert(next_id, cap.retain_least(0).expect("steps are totally ordered"));
                        backlog.push_back((next_id, job));
                        next_id += 1;
                    }
                });
                if crate::feed(&mut backlog, &job_tx).is_err() {
                    run.fail(&cfg.stage, "every decoder thread has stopped");
                    backlog.clear();
                    caps.clear();
                    return;
                }
                while let Ok((t, job, result)) = res_rx.try_recv() {
                    let cap = caps.remove(&t).expect("a capability is held for every job in flight");
                    match result {
                        Ok(samples) => {
                            if used.insert(job.item.id.clone()) {
                                RunStats::add(&run.stats.videos_done, 1);
                            }
                            for s in samples {
                                let at = cap.delayed(&s.at.step);
                                output.session(&at).give(Ok(s));
                            }
                        }
                        Err(e) => {
                            if reported.insert(job.item.id.clone()) {
                                let error =
                                    ItemError::new(job.item.id.to_string(), ErrorStage::Decode, Reason::unreadable(&e));
                                output.session(&cap).give(Err(error));
                            }
                        }
                    }
                }
            }
        },
    );
    use timely::dataflow::operators::OkErr;
    results.ok_err(|r| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_uses_every_clip_once_and_drops_only_a_last_batch_too_small_for_the_workers() {
        let steps = schedule_epoch(10, 0, 4, 3, 7);
        // 10 clips in batches of 4: 4 + 4 + 2, and 2 < 3 workers.
        assert_eq!(steps.len(), 8);
        assert_eq!(steps_per_epoch(10, 4, 3), 2);
        let mut seen: Vec<usize> = steps.iter().map(|s| s.0).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 8);
        assert_eq!(steps_per_epoch(10, 4, 2), 3);
        assert_ne!(schedule_epoch(10, 0, 4, 1, 7), schedule_epoch(10, 1, 4, 1, 7), "each epoch reshuffles");
    }
}
