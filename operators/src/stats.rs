//! Counters shared by the operators of one process, read by the progress
//! display and the run summary. At the end of a run every process sends its
//! counters to process 0 (see `control`), so the summary covers the cluster.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Live counters of one process.
        #[derive(Debug, Default)]
        pub struct RunStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// The counters' values at one moment, summed over processes.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counts {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl RunStats {
            /// The current values.
            pub fn snapshot(&self) -> Counts {
                Counts { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Counts {
            /// Adds another process's counts.
            pub fn add(&mut self, other: &Counts) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Videos listed for this run (after those finished by an earlier run).
    videos_total,
    /// Videos whose output is complete (written, collected, or used for
    /// training).
    videos_done,
    videos_failed,
    /// Finished by an earlier run of the same command and kept.
    videos_skipped,
    frames_decoded,
    /// Decoding passes started (one per video, per epoch in training).
    decode_passes,
    /// Decoding passes the GPU's video decoder made (`decoder = "nvdec"`).
    nvdec_passes,
    clips_encoded,
    clips_written,
    /// Captions the frozen text encoder actually ran on (cache misses).
    text_forwards,
    /// Nanoseconds the encoder spent waiting for a batch.
    encoder_wait_ns,
    /// Nanoseconds the encoder spent computing.
    encoder_busy_ns,
    /// Batches the encoder ran; each costs a full batch however few clips
    /// it carries (the rest is padding).
    encoder_batches,
    /// Optimiser steps taken by this run.
    train_steps,
}

impl RunStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
