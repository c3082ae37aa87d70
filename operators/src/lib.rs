//! Thin timely-dataflow wrappers around the stages: each operator moves
//! heavy work (decoding, the model) to dedicated threads behind bounded
//! crossbeam channels, holds a capability for every piece of work in
//! flight, and is woken by those threads when results arrive. Timestamps
//! carry meaning: in extraction a timestamp is a video's position in the
//! run's video list, so a frontier passing `t` says video `t` is complete.

pub mod clips;
pub mod collect;
pub mod decode;
pub mod encode;
pub mod messages;
pub mod stats;
pub mod text_cache;
pub mod train;
pub mod writer;

pub use messages::{ClipMsg, FeatureMsg, FrameMsg, ItemError, VideoItem};
pub use stats::RunStats;

/// Moves queued jobs into a bounded channel of worker threads until it is
/// full; the rest wait for the next activation (the threads wake the
/// operator whenever they finish something).
pub(crate) fn feed<T>(backlog: &mut std::collections::VecDeque<T>, jobs: &crossbeam_channel::Sender<T>) {
    while let Some(job) = backlog.pop_front() {
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(job)) => {
                backlog.push_front(job);
                return;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => panic!("all decoder threads have stopped"),
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn shard_hash_is_stable_and_spreads() {
        // FNV-1a test vectors.
        assert_eq!(super::shard_of(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::shard_of("a"), 0xaf63_dc4c_8601_ec8c);
        let ids: Vec<String> = (0..64).map(|i| format!("video{i:03}")).collect();
        let on_zero = ids.iter().filter(|v| super::shard_of(v).is_multiple_of(2)).count();
        assert!((16..=48).contains(&on_zero), "{on_zero} of 64 on worker 0");
    }
}
