//! Training samples at any corpus size: sharded, streaming, with a bounded
//! shuffle window. Timestamps are global optimiser steps.
//!
//! Videos belong to a fixed number of logical *shards* by a stable hash of
//! their id; shard `s` lives on worker `s mod workers`. Every epoch:
//!
//! * the global batch of each step is shared among the shards in
//!   proportion to their caption clips (Webster's divisor method applied
//!   seat by seat: every shard's share of the epoch is spread evenly over
//!   its steps, and every step has exactly `batch_size` samples);
//! * each shard visits its videos in a seeded order and puts the caption
//!   clips of each visit into its shuffle window (WebDataset's shuffle
//!   buffer); a step's share is drawn at random from the window, which is
//!   refilled to `window` clips before each draw;
//! * the draws work on clip references only, so they are a pure function of
//!   (seed, epoch, shard) and resuming replays them without decoding; a
//!   visit is decoded (once, for all its clips) when it enters the window.
//!
//! Nothing here depends on the number of workers: a step's samples are
//! numbered in shard order, and the trainer splits them into micro-batches
//! by that number. Memory holds each local shard's window and the visits
//! decoded ahead of it, never the corpus.

use crate::messages::{ErrorStage, ItemError, Reason, VideoCaptions};
use crate::run::RunShared;
use crate::samples::{Sample, StepInfo};
use crate::stats::RunStats;
use crossbeam_channel::bounded;
use locvtp_media::decode::{decode_video, DecodeOptions};
use locvtp_media::sampling::{caption_frame_range, segment_frame_indices};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, OkErr};
use timely::dataflow::{ProbeHandle, Stream};

/// How samples are drawn.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// The stage's name in the graph, for messages.
    pub stage: String,
    pub seed: u64,
    pub epochs: u32,
    /// Global batch size.
    pub batch_size: usize,
    /// Steps already taken by the checkpoint the run resumes from.
    pub first_step: u64,
    /// The data fingerprint recorded in that checkpoint's run manifest.
    pub resumed_fingerprint: Option<String>,
    /// Resume even when the data fingerprint differs (a warning instead of
    /// a stop).
    pub accept_changed_data: bool,
    /// Steps emitted ahead of the last one training has finished.
    pub lookahead: u64,
    /// Logical data shards; fixed for a training run whatever its workers.
    pub shards: u32,
    /// Caption clips in each shard's shuffle window.
    pub window: usize,
    /// Most caption clips one decode pass serves; a video with more is
    /// visited several times an epoch.
    pub visit_clips: usize,
    pub decode: DecodeOptions,
    /// Videos decoded at once per worker.
    pub threads: usize,
    /// Visits decoded ahead of the window, per shard.
    pub prefetch: usize,
    pub num_segments: usize,
    pub frames_per_segment: usize,
}

/// The shard of a video.
pub fn shard_of_video(video_id: &str, shards: u32) -> u32 {
    (crate::shard_of(video_id) % u64::from(shards.max(1))) as u32
}

/// A seed mixed from parts, so that every (epoch, shard, ...) gets its own
/// stream of draws.
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    h
}

/// The steps of an epoch over `clips` caption clips: full batches, the
/// remainder left for the next epoch's shuffle (a corpus smaller than a
/// batch makes one smaller step).
pub fn epoch_steps(clips: u64, batch: u64) -> (u64, u64) {
    match (clips, batch.max(1)) {
        (0, _) => (0, 0),
        (n, b) if n < b => (1, n),
        (n, b) => (n / b, b),
    }
}

/// Webster's divisor method, one seat at a time: each seat goes to the
/// shard with the largest `clips / (2 * given + 1)` (ties to the lower
/// shard). It never takes more from a shard than it has, and every prefix
/// of an epoch is as proportional as it can be.
#[derive(Debug, Clone)]
pub struct Allocation {
    clips: Vec<u64>,
    given: Vec<u64>,
}

impl Allocation {
    pub fn new(clips: Vec<u64>) -> Allocation {
        let given = vec![0; clips.len()];
        Allocation { clips, given }
    }

    /// Each shard's share of the next `seats` samples.
    pub fn next(&mut self, seats: u64) -> Vec<u64> {
        let mut share = vec![0; self.clips.len()];
        for _ in 0..seats {
            let mut best: Option<usize> = None;
            for s in 0..self.clips.len() {
                if self.given[s] >= self.clips[s] {
                    continue;
                }
                // clips[s] / (2 given[s] + 1) > clips[b] / (2 given[b] + 1)
                let better = match best {
                    None => true,
                    Some(b) => {
                        u128::from(self.clips[s]) * u128::from(2 * self.given[b] + 1)
                            > u128::from(self.clips[b]) * u128::from(2 * self.given[s] + 1)
                    }
                };
                if better {
                    best = Some(s);
                }
            }
            let Some(b) = best else { break };
            self.given[b] += 1;
            share[b] += 1;
        }
        share
    }
}

/// A caption clip of a shard: its video (index in the shard's sorted
/// videos) and its place among the video's clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClipRef {
    pub video: u32,
    pub clip: u32,
}

/// Some caption clips of one video, decoded together.
#[derive(Debug, Clone, PartialEq)]
struct Visit {
    video: u32,
    clips: Vec<u32>,
}

/// One shard's epoch: its visits in seeded order and its shuffle window,
/// all by reference.
#[derive(Debug)]
pub struct ShardEpoch {
    visits: Vec<Visit>,
    /// Visits already put into the window.
    entered: usize,
    window: Vec<ClipRef>,
    capacity: usize,
    rng: ChaCha8Rng,
}

impl ShardEpoch {
    /// The epoch `epoch` of a shard whose videos have `clips[v]` caption
    /// clips each.
    pub fn new(clips: &[usize], seed: u64, epoch: u32, shard: u32, window: usize, visit_clips: usize) -> ShardEpoch {
        let mut order: Vec<u32> = (0..clips.len() as u32).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[seed, u64::from(epoch), u64::from(shard), 1])));
        let mut visits = Vec::new();
        for v in order {
            let all: Vec<u32> = (0..clips[v as usize] as u32).collect();
            for part in all.chunks(visit_clips.max(1)) {
                visits.push(Visit { video: v, clips: part.to_vec() });
            }
        }
        ShardEpoch {
            visits,
            entered: 0,
            window: Vec::new(),
            capacity: window.max(1),
            rng: ChaCha8Rng::seed_from_u64(mix(&[seed, u64::from(epoch), u64::from(shard), 2])),
        }
    }

    /// Draws `n` clips, filling the window to capacity before each draw.
    /// Returns the draws and the visits that entered the window meanwhile
    /// (by index), which now need decoding.
    pub fn draw(&mut self, n: u64) -> (Vec<ClipRef>, Vec<usize>) {
        let mut drawn = Vec::with_capacity(n as usize);
        let mut entered = Vec::new();
        for _ in 0..n {
            while self.window.len() < self.capacity && self.entered < self.visits.len() {
                let visit = &self.visits[self.entered];
                self.window.extend(visit.clips.iter().map(|&clip| ClipRef { video: visit.video, clip }));
                entered.push(self.entered);
                self.entered += 1;
            }
            if self.window.is_empty() {
                break;
            }
            let i = self.rng.random_range(0..self.window.len());
            drawn.push(self.window.swap_remove(i));
        }
        (drawn, entered)
    }

    /// The visit at `index` (the clips it decodes).
    fn visit(&self, index: usize) -> &Visit {
        &self.visits[index]
    }

    pub fn visits(&self) -> usize {
        self.visits.len()
    }
}

/// The caption clips of the shards one worker owns, by shard, each shard's
/// videos sorted by id once they are all in.
#[derive(Debug, Default)]
struct ShardTable {
    shards: BTreeMap<u32, Vec<VideoCaptions>>,
}

/// How many caption clips a shard has, and what they hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCount {
    pub shard: u32,
    pub clips: u64,
    /// SHA-256 of the shard's videos (ids, in order) and caption clips
    /// (times and texts): what its samples are drawn from.
    pub digest: [u8; 32],
}

/// The digest of one shard's videos, sorted by id.
fn shard_digest(videos: &[VideoCaptions]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in videos {
        h.update((v.meta.video.id.len() as u64).to_le_bytes());
        h.update(v.meta.video.id.as_bytes());
        h.update((v.clips.len() as u64).to_le_bytes());
        for c in &v.clips {
            h.update(c.start_s.to_le_bytes());
            h.update(c.end_s.to_le_bytes());
            h.update((c.text.len() as u64).to_le_bytes());
            h.update(c.text.as_bytes());
        }
    }
    h.finalize().into()
}

/// The fingerprint of the training data: a hash of every shard's count and
/// digest, in shard order, as 16 hex digits. It changes with any video,
/// caption clip or caption text, and with the shard count, and not with the
/// number of workers.
pub fn data_fingerprint(shards: &[ShardCount]) -> String {
    let mut h = Sha256::new();
    for s in shards {
        h.update(s.shard.to_le_bytes());
        h.update(s.clips.to_le_bytes());
        h.update(s.digest);
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A decoded visit: the pixels of each clip.
type Decoded = anyhow::Result<Vec<(u32, Vec<u8>)>>;

/// A decode job: which shard, epoch and visit, and what to decode.
struct DecodeJob {
    shard: u32,
    epoch: u32,
    visit: usize,
    video: crate::messages::VideoItem,
    /// Per clip: its index and frame indices.
    clips: Vec<(u32, Vec<i64>)>,
}

/// Decodes one visit: every needed frame once, cut into each clip's
/// segments; indices past the real end repeat the last decoded frame.
fn decode_visit(job: &DecodeJob, options: &DecodeOptions, stats: &RunStats) -> Decoded {
    RunStats::add(&stats.decode_passes, 1);
    let needed: BTreeSet<u64> = job.clips.iter().flat_map(|(_, idx)| idx.iter().map(|&i| i.max(0) as u64)).collect();
    let last_needed = needed.last().copied().unwrap_or(0);
    let mut kept: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut last_frame: Option<(u64, Vec<u8>)> = None;
    let decoded = decode_video(&job.video.path, options, |chunk| {
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
    RunStats::add(&stats.nvdec_passes, u64::from(decoded.nvdec));
    let (last_index, last_pixels) = last_frame.ok_or_else(|| anyhow::anyhow!("no frame decoded"))?;
    Ok(job
        .clips
        .iter()
        .map(|(clip, plan)| {
            let mut pixels = Vec::with_capacity(plan.len() * last_pixels.len());
            for &i in plan {
                let i = (i.max(0) as u64).min(last_index);
                pixels.extend_from_slice(kept.get(&i).unwrap_or(&last_pixels));
            }
            (*clip, pixels)
        })
        .collect())
}

/// The TSN frame indices of a clip in an epoch: seeded by the clip, the
/// epoch and the run, not by where or when it is decoded.
fn frame_plan(cfg: &SamplerConfig, captions: &VideoCaptions, clip: u32, epoch: u32) -> Vec<i64> {
    let c = &captions.clips[clip as usize];
    let (start, end) = caption_frame_range(c.start_s, c.end_s, captions.meta.fps());
    let seed = mix(&[cfg.seed, u64::from(epoch), crate::shard_of(&captions.meta.video.id), u64::from(clip), 3]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    segment_frame_indices(start, end.max(start), cfg.num_segments, cfg.frames_per_segment, &mut rng)
}

/// Gathers the caption clips of each shard on the shard's worker; returns
/// their counts (broadcast to every worker) and the table they fill.
fn gather_shards<'s>(
    captions: Stream<'s, u64, Vec<VideoCaptions>>,
    shards: u32,
) -> (Stream<'s, u64, Vec<ShardCount>>, Rc<RefCell<ShardTable>>) {
    let table = Rc::new(RefCell::new(ShardTable::default()));
    let fill = table.clone();
    let (index, peers) = (captions.scope().index(), captions.scope().peers());
    let counts = captions.unary_frontier::<CapacityContainerBuilder<Vec<ShardCount>>, _, _, _>(
        Exchange::new(move |c: &VideoCaptions| u64::from(shard_of_video(&c.meta.video.id, shards))),
        "GatherShards",
        move |cap, _info| {
            let mut cap = Some(cap);
            move |(input, frontier), output| {
                input.for_each(|_cap, data| {
                    let mut t = fill.borrow_mut();
                    for c in data.drain(..) {
                        if !c.clips.is_empty() {
                            t.shards.entry(shard_of_video(&c.meta.video.id, shards)).or_default().push(c);
                        }
                    }
                });
                if frontier.is_empty() {
                    if let Some(cap) = cap.take() {
                        let mut t = fill.borrow_mut();
                        let mut session = output.session(&cap);
                        for s in (0..shards).filter(|s| *s as usize % peers == index) {
                            let videos = t.shards.entry(s).or_default();
                            videos.sort_by(|a, b| a.meta.video.id.cmp(&b.meta.video.id));
                            let clips = videos.iter().map(|v| v.clips.len() as u64).sum();
                            session.give(ShardCount { shard: s, clips, digest: shard_digest(videos) });
                        }
                    }
                }
            }
        },
    );
    (counts.broadcast(), table)
}

/// How long a sampler blocked by its look-ahead waits before looking at
/// training's progress again.
const RECHECK: Duration = Duration::from_millis(5);

/// One local shard during an epoch.
struct LocalShard {
    epoch: ShardEpoch,
    /// Pixels of the clips in the window and drawn, by clip; `None` when the
    /// visit could not be decoded.
    pixels: HashMap<ClipRef, Option<Vec<u8>>>,
    /// Visits decoded or being decoded.
    requested: BTreeSet<usize>,
}

/// The samples of one step on this worker, waiting for their pixels.
struct PendingStep {
    at: StepInfo,
    /// `(slot, shard, clip)`.
    draws: Vec<(u32, u32, ClipRef)>,
}

/// The sampler's state on one worker.
struct Sampler {
    cfg: SamplerConfig,
    table: Rc<RefCell<ShardTable>>,
    counts: Vec<u64>,
    local: BTreeMap<u32, LocalShard>,
    epoch: u32,
    steps: u64,
    seats: u64,
    step_in_epoch: u64,
    allocation: Allocation,
    pending: VecDeque<PendingStep>,
    jobs: VecDeque<DecodeJob>,
    /// Videos that failed to decode (reported once) and videos used.
    reported: BTreeSet<Arc<str>>,
    used: BTreeSet<Arc<str>>,
}

impl Sampler {
    fn total_steps(&self) -> u64 {
        self.steps * u64::from(self.cfg.epochs)
    }

    /// Starts epoch `epoch` for the local shards.
    fn start_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.step_in_epoch = 0;
        self.allocation = Allocation::new(self.counts.clone());
        let table = self.table.borrow();
        self.local = table
            .shards
            .iter()
            .map(|(&s, videos)| {
                let clips: Vec<usize> = videos.iter().map(|v| v.clips.len()).collect();
                let shard_epoch =
                    ShardEpoch::new(&clips, self.cfg.seed, epoch, s, self.cfg.window, self.cfg.visit_clips);
                (s, LocalShard { epoch: shard_epoch, pixels: HashMap::new(), requested: BTreeSet::new() })
            })
            .collect();
    }

    /// Draws the next step of the epoch by reference. With `decode`, the
    /// visits that entered a window are queued for decoding.
    fn draw_step(&mut self, decode: bool) -> PendingStep {
        let share = self.allocation.next(self.seats);
        let global = u64::from(self.epoch) * self.steps + self.step_in_epoch;
        let at = StepInfo {
            step: global,
            epoch: self.epoch,
            epoch_end: self.step_in_epoch + 1 == self.steps,
            steps_total: self.total_steps(),
        };
        self.step_in_epoch += 1;
        let mut slot = 0u32;
        let mut draws = Vec::new();
        for (s, &n) in share.iter().enumerate() {
            let s = s as u32;
            if let Some(local) = self.local.get_mut(&s) {
                let (drawn, entered) = local.epoch.draw(n);
                for clip in drawn {
                    draws.push((slot, s, clip));
                    slot += 1;
                }
                if decode {
                    for visit in entered {
                        self.request(s, visit);
                    }
                }
            } else {
                slot += n as u32;
            }
        }
        PendingStep { at, draws }
    }

    /// Queues visit `visit` of shard `shard` (and the next few) for decoding.
    fn request(&mut self, shard: u32, visit: usize) {
        let table = self.table.borrow();
        let Some(videos) = table.shards.get(&shard) else { return };
        let local = self.local.get_mut(&shard).expect("local shard");
        let last = (visit + self.cfg.prefetch).min(local.epoch.visits().saturating_sub(1));
        for v in visit..=last {
            if !local.requested.insert(v) {
                continue;
            }
            let plan = local.epoch.visit(v);
            let captions = &videos[plan.video as usize];
            let clips = plan.clips.iter().map(|&c| (c, frame_plan(&self.cfg, captions, c, self.epoch))).collect();
            self.jobs.push_back(DecodeJob {
                shard,
                epoch: self.epoch,
                visit: v,
                video: captions.meta.video.clone(),
                clips,
            });
        }
    }

    /// After a resume's replay: the clips still in each window need their
    /// visits decoded.
    fn request_windows(&mut self) {
        let wanted: Vec<(u32, usize)> = self
            .local
            .iter()
            .flat_map(|(&s, local)| {
                let visits: BTreeSet<usize> = (0..local.epoch.entered)
                    .filter(|&v| {
                        let visit = local.epoch.visit(v);
                        local.epoch.window.iter().any(|c| c.video == visit.video && visit.clips.contains(&c.clip))
                    })
                    .collect();
                visits.into_iter().map(move |v| (s, v))
            })
            .collect();
        for (s, v) in wanted {
            self.request(s, v);
        }
    }

    /// Files a decoded visit's pixels.
    fn decoded(&mut self, job: &DecodeJob, result: Decoded, stats: &RunStats) -> Option<ItemError> {
        if job.epoch != self.epoch {
            return None;
        }
        let local = self.local.get_mut(&job.shard)?;
        let video = local.epoch.visit(job.visit).video;
        match result {
            Ok(clips) => {
                if self.used.insert(job.video.id.clone()) {
                    RunStats::add(&stats.videos_done, 1);
                }
                for (clip, pixels) in clips {
                    local.pixels.insert(ClipRef { video, clip }, Some(pixels));
                }
                None
            }
            Err(e) => {
                for (clip, _) in &job.clips {
                    local.pixels.insert(ClipRef { video, clip: *clip }, None);
                }
                self.reported
                    .insert(job.video.id.clone())
                    .then(|| ItemError::new(job.video.id.to_string(), ErrorStage::Decode, Reason::unreadable(&e)))
            }
        }
    }

    /// The samples of the oldest pending step, once every clip's pixels are
    /// in (a clip whose video failed to decode is left out).
    fn complete_step(&mut self) -> Option<(StepInfo, Vec<Sample>)> {
        let step = self.pending.front()?;
        let ready = step.draws.iter().all(|(_, s, c)| self.local.get(s).is_some_and(|l| l.pixels.contains_key(c)));
        if !ready {
            return None;
        }
        let step = self.pending.pop_front().expect("front exists");
        let table = self.table.borrow();
        let mut samples = Vec::with_capacity(step.draws.len());
        for (slot, s, clip) in step.draws {
            let local = self.local.get_mut(&s).expect("local shard");
            let Some(Some(pixels)) = local.pixels.remove(&clip) else { continue };
            let captions = &table.shards[&s][clip.video as usize];
            samples.push(Sample {
                at: step.at,
                slot,
                video: captions.meta.video.id.clone(),
                text: captions.clips[clip.clip as usize].text.clone(),
                pixels,
            });
        }
        Some((step.at, samples))
    }
}

type SampleOutput<'a> = OutputBuilderSession<'a, u64, CapacityContainerBuilder<Vec<Result<Sample, ItemError>>>>;

/// One activation of the sampler: files decoded visits, draws ahead within
/// the look-ahead, feeds the decoders, and emits the steps that are
/// complete and that training is ready for. Returns true once every step
/// is out (or the run is stopping).
#[allow(clippy::too_many_arguments)]
fn step_sampler(
    state: &mut Sampler,
    cfg: &SamplerConfig,
    run: &RunShared,
    flow: &ProbeHandle<u64>,
    activator: &timely::scheduling::Activator,
    job_tx: &crossbeam_channel::Sender<DecodeJob>,
    res_rx: &crossbeam_channel::Receiver<(DecodeJob, Decoded)>,
    cap: &mut Option<Capability<u64>>,
    output: &mut SampleOutput<'_>,
) -> bool {
    let Some(held) = cap.as_mut() else { return true };
    if state.steps == 0 || cfg.first_step >= state.total_steps() {
        return true;
    }
    loop {
        let next = u64::from(state.epoch) * state.steps + state.step_in_epoch;
        if state.pending.is_empty() && next >= state.total_steps() {
            return true;
        }
        if run.stopping() {
            run.mark_cut_short();
            return true;
        }
        let mut progress = false;
        while let Ok((job, result)) = res_rx.try_recv() {
            if let Some(e) = state.decoded(&job, result, &run.stats) {
                output.session(&*held).give(Err(e));
            }
        }
        // Draw ahead, by reference: the steps within the look-ahead. The
        // next epoch starts once this one's samples are out (its windows
        // then hold nothing).
        loop {
            let next = u64::from(state.epoch) * state.steps + state.step_in_epoch;
            if next >= state.total_steps() || state.pending.len() as u64 > cfg.lookahead {
                break;
            }
            if state.step_in_epoch == state.steps {
                if !state.pending.is_empty() {
                    break;
                }
                state.start_epoch(state.epoch + 1);
            }
            let step = state.draw_step(true);
            state.pending.push_back(step);
        }
        while let Some(job) = state.jobs.pop_front() {
            match job_tx.try_send(job) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(job)) => {
                    state.jobs.push_front(job);
                    break;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    run.fail(&cfg.stage, "every decoder thread has stopped");
                    return true;
                }
            }
        }
        // Emit the complete steps training is ready for.
        while let Some(front) = state.pending.front() {
            let step = front.at.step;
            held.downgrade(&step);
            if flow.less_than(&step.saturating_sub(cfg.lookahead)) {
                activator.activate_after(RECHECK);
                break;
            }
            let Some((_, samples)) = state.complete_step() else { break };
            output.session(&*held).give_iterator(samples.into_iter().map(Ok));
            progress = true;
        }
        if !progress {
            return false;
        }
    }
}

/// Caption clips in, training samples out (see the module documentation).
/// `flow` probes the end of training. Records the caption clips, shards
/// and videos as the output of the stage.
pub fn sample<'s>(
    captions: Stream<'s, u64, Vec<VideoCaptions>>,
    cfg: SamplerConfig,
    flow: ProbeHandle<u64>,
    run: Arc<RunShared>,
) -> (Stream<'s, u64, Vec<Sample>>, Stream<'s, u64, Vec<ItemError>>) {
    let scope = captions.scope();
    let (counts, table) = gather_shards(captions, cfg.shards);
    let worker = scope.worker();
    let is_first = scope.index() == 0;
    let results = counts.unary_frontier::<CapacityContainerBuilder<Vec<Result<Sample, ItemError>>>, _, _, _>(
        Pipeline,
        "SampleSteps",
        move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            let sync = Arc::new(worker.sync_activator_for(info.address.to_vec()));
            let (job_tx, job_rx) = bounded::<DecodeJob>(cfg.threads.max(1));
            let (res_tx, res_rx) = bounded::<(DecodeJob, Decoded)>(cfg.threads.max(1) + cfg.prefetch.max(1));
            let mut not_started = None;
            for i in 0..cfg.threads.max(1) {
                let (job_rx, res_tx, sync, run, options) =
                    (job_rx.clone(), res_tx.clone(), sync.clone(), run.clone(), cfg.decode);
                let spawned = std::thread::Builder::new()
                    .name(format!("sampler-decode-{i}"))
                    .spawn(move || {
                        for job in job_rx {
                            let result = decode_visit(&job, &options, &run.stats);
                            if res_tx.send((job, result)).is_err() {
                                return;
                            }
                            let _ = sync.activate();
                        }
                    });
                if let Err(e) = spawned {
                    not_started = Some(format!("cannot start decoder thread {i}: {e}"));
                }
            }
            if let Some(why) = not_started {
                run.fail(&cfg.stage, why);
            }
            drop(res_tx);
            let mut cap: Option<Capability<u64>> = Some(cap);
            let mut counts: BTreeMap<u32, ShardCount> = BTreeMap::new();
            let mut sampler: Option<Sampler> = None;
            let table = table.clone();
            move |(input, frontier), output| {
                input.for_each(|_cap, data| {
                    for c in data.drain(..) {
                        counts.insert(c.shard, c);
                    }
                });
                if cap.is_none() || !frontier.is_empty() {
                    return;
                }
                if sampler.is_none() {
                    let all: Vec<ShardCount> = (0..cfg.shards)
                        .map(|s| counts.get(&s).cloned().unwrap_or(ShardCount { shard: s, clips: 0, digest: [0; 32] }))
                        .collect();
                    let fingerprint = data_fingerprint(&all);
                    run.set_data_fingerprint(fingerprint.clone());
                    if let Some(trained_on) = cfg.resumed_fingerprint.as_ref().filter(|f| **f != fingerprint) {
                        let message = format!(
                            "the training data differ from those of the checkpoint resumed at step {} (data fingerprint {fingerprint}, the checkpoint's {trained_on}): videos, caption clips or their texts changed",
                            cfg.first_step
                        );
                        if cfg.accept_changed_data {
                            tracing::warn!("{message}; continuing, as asked");
                        } else {
                            run.fail_resume_mismatch(
                                &cfg.stage,
                                format!("{message}; restore them, or set accept_changed_settings = true on the train stage to continue anyway"),
                            );
                            cap = None;
                            return;
                        }
                    }
                }
                let state = sampler.get_or_insert_with(|| {
                    let counts: Vec<u64> = (0..cfg.shards).map(|s| counts.get(&s).map_or(0, |c| c.clips)).collect();
                    let clips: u64 = counts.iter().sum();
                    let (steps, seats) = epoch_steps(clips, cfg.batch_size as u64);
                    if is_first {
                        run.record_output(
                            &cfg.stage,
                            serde_json::json!({
                                "caption_clips": clips,
                                "shards": cfg.shards,
                                "steps_per_epoch": steps,
                                "steps_total": steps * u64::from(cfg.epochs),
                                "first_step": cfg.first_step,
                                "window": cfg.window,
                                "data_fingerprint": run.data_fingerprint(),
                            }),
                        );
                        tracing::info!("{clips} caption clips in {} shards, {steps} steps an epoch", cfg.shards);
                    }
                    let mut s = Sampler {
                        cfg: cfg.clone(),
                        table: table.clone(),
                        counts,
                        local: BTreeMap::new(),
                        epoch: 0,
                        steps,
                        seats,
                        step_in_epoch: 0,
                        allocation: Allocation::new(Vec::new()),
                        pending: VecDeque::new(),
                        jobs: VecDeque::new(),
                        reported: BTreeSet::new(),
                        used: BTreeSet::new(),
                    };
                    if steps > 0 && cfg.first_step < s.total_steps() {
                        // Resume: replay the draws before the first step by
                        // reference, then decode what the windows hold.
                        s.start_epoch((cfg.first_step / steps) as u32);
                        for _ in 0..cfg.first_step % steps {
                            s.draw_step(false);
                        }
                        s.request_windows();
                    }
                    s
                });
                let finished = step_sampler(state, &cfg, &run, &flow, &activator, &job_tx, &res_rx, &mut cap, output);
                if finished {
                    cap = None;
                }
            }
        },
    );
    results.ok_err(|r| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_full_and_each_shard_gives_in_proportion() {
        let mut a = Allocation::new(vec![30, 10, 0, 20]);
        let (steps, seats) = epoch_steps(60, 8);
        assert_eq!((steps, seats), (7, 8));
        let mut totals = vec![0u64; 4];
        for _ in 0..steps {
            let share = a.next(seats);
            assert_eq!(share.iter().sum::<u64>(), 8, "a full batch every step");
            for (t, s) in totals.iter_mut().zip(&share) {
                *t += s;
            }
        }
        assert_eq!(totals[2], 0, "an empty shard gives nothing");
        // 56 of 60 clips: each shard near its share, never above its clips.
        assert!(totals[0] <= 30 && totals[1] <= 10 && totals[3] <= 20);
        assert!(totals[0] >= 27 && totals[1] >= 8 && totals[3] >= 18, "{totals:?}");
        let mut whole = Allocation::new(vec![30, 10, 0, 20]);
        assert_eq!(whole.next(60), vec![30, 10, 0, 20], "a whole epoch takes every clip");
    }

    #[test]
    fn a_corpus_smaller_than_a_batch_is_one_smaller_step() {
        assert_eq!(epoch_steps(5, 8), (1, 5));
        assert_eq!(epoch_steps(0, 8), (0, 0));
        assert_eq!(epoch_steps(16, 8), (2, 8));
    }

    #[test]
    fn draws_take_each_clip_once_and_depend_only_on_seed_epoch_and_shard() {
        let clips = [3usize, 5, 1, 4];
        let mut a = ShardEpoch::new(&clips, 7, 2, 1, 4, 2);
        let mut seen = Vec::new();
        let mut entered = Vec::new();
        for n in [2u64, 3, 3, 5] {
            let (d, e) = a.draw(n);
            assert_eq!(d.len() as u64, n);
            assert!(a.window.len() <= 4 + 1, "the window holds at most its capacity and one visit");
            seen.extend(d);
            entered.extend(e);
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 13, "13 clips, each drawn once");
        assert_eq!(entered, (0..a.visits()).collect::<Vec<_>>(), "visits enter in order, once each");
        // Videos with more clips than a visit holds are visited again.
        assert_eq!(a.visits(), 2 + 3 + 1 + 2);
        let mut b = ShardEpoch::new(&clips, 7, 2, 1, 4, 2);
        let again: Vec<ClipRef> = [2u64, 3, 3, 5].iter().flat_map(|&n| b.draw(n).0).collect();
        assert_eq!(seen, again, "the same seed, epoch and shard draw the same");
        let mut c = ShardEpoch::new(&clips, 7, 3, 1, 4, 2);
        let other: Vec<ClipRef> = [2u64, 3, 3, 5].iter().flat_map(|&n| c.draw(n).0).collect();
        assert_ne!(seen, other, "another epoch shuffles otherwise");
    }
}
