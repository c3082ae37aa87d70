//! A training sample and the step it belongs to (see `sampler` for how
//! samples are drawn).

use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
