//! Counters shared by the operators of one process, read by the progress
//! display and the run summary.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct RunStats {
    pub videos_total: AtomicU64,
    pub videos_done: AtomicU64,
    pub videos_failed: AtomicU64,
    pub videos_skipped: AtomicU64,
    pub frames_decoded: AtomicU64,
    /// Decoding passes started (one per video, per epoch in training).
    pub decode_passes: AtomicU64,
    pub clips_encoded: AtomicU64,
    pub clips_written: AtomicU64,
    /// Captions the frozen text encoder actually ran on (cache misses).
    pub text_forwards: AtomicU64,
    /// Nanoseconds the encoder spent waiting for a batch.
    pub encoder_wait_ns: AtomicU64,
    /// Nanoseconds the encoder spent computing.
    pub encoder_busy_ns: AtomicU64,
    /// Batches the encoder ran; each costs a full batch however few clips
    /// it carries (the rest is padding).
    pub encoder_batches: AtomicU64,
}

impl RunStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
