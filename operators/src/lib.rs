//! Timely-dataflow operators over the locvtp stages. Each operator moves
//! heavy work (decoding, the model) to dedicated threads behind bounded
//! crossbeam channels, holds a capability for every piece of work in
//! flight, and is woken by those threads when results arrive. Timestamps
//! carry meaning: in extraction a timestamp is a video's position in its
//! worker's list, so a frontier passing `t` says video `t` is complete; in
//! training it is the optimiser step.
//!
//! Operators know nothing of graph files; `locvtp-flow`'s stage types wire
//! them.

pub mod accumulate;
pub mod align;
pub mod bulk;
pub mod clips;
pub mod collect;
pub mod control;
pub mod decode;
pub mod encode;
pub mod errors;
pub mod grounding;
pub mod manifest;
pub mod messages;
pub mod run;
pub mod sampler;
pub mod samples;
pub mod source;
pub mod stats;
pub mod text_cache;
pub mod train;
pub mod writer;

#[cfg(test)]
pub(crate) mod testing {
    use timely::dataflow::operators::capture::Event;

    /// Everything a captured stream carried, `(time, item)` in arrival
    /// order (for items without an order of their own).
    pub fn drain<D>(events: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<(u64, D)> {
        events
            .try_iter()
            .flat_map(|e| match e {
                Event::Messages(stamp, data) => {
                    let t = *stamp.least().expect("a message has a time");
                    data.into_iter().map(|d| (t, d)).collect()
                }
                Event::Progress(_) => Vec::new(),
            })
            .collect()
    }
}

pub use messages::{
    CaptionSpan, ClipMsg, ErrorStage, FeatureMsg, FrameMsg, ItemError, Narration, Reason, VideoCaptions, VideoItem,
    VideoMeta,
};
pub use run::{
    catch_panic, panic_is_caught, FatalError, PendingOutput, RunShared, SkippedFiles, StopCause, TrainingProgress,
};
pub use stats::{Counts, RunStats};

/// The decoder threads of an operator are gone (they only stop when their
/// job channel closes, or by a panic inside FFmpeg).
#[derive(Debug)]
pub struct ThreadsGone;

/// Moves queued jobs into a bounded channel of worker threads until it is
/// full; the rest wait for the next activation (the threads wake the
/// operator whenever they finish something).
pub(crate) fn feed<T>(
    backlog: &mut std::collections::VecDeque<T>,
    jobs: &crossbeam_channel::Sender<T>,
) -> Result<(), ThreadsGone> {
    while let Some(job) = backlog.pop_front() {
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(job)) => {
                backlog.push_front(job);
                return Ok(());
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(ThreadsGone),
        }
    }
    Ok(())
}

/// Stable shard key of a video id (FNV-1a, 64 bit): the same id goes to the
/// same worker in every run and every process, whatever the build.
pub fn shard_of(video_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in video_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The worker of `peers` that timely's exchange by [`shard_of`] sends a
/// video to (timely routes a key `k` to worker `k % peers`).
pub fn worker_of(video_id: &str, peers: usize) -> usize {
    (shard_of(video_id) % peers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_hash_is_stable_and_spreads() {
        // FNV-1a test vectors.
        assert_eq!(super::shard_of(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::shard_of("a"), 0xaf63_dc4c_8601_ec8c);
        let ids: Vec<String> = (0..64).map(|i| format!("video{i:03}")).collect();
        let on_zero = ids.iter().filter(|v| super::worker_of(v, 2) == 0).count();
        assert!((16..=48).contains(&on_zero), "{on_zero} of 64 on worker 0");
    }
}
