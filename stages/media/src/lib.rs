//! Video decoding with FFmpeg, frame preprocessing, clip sampling and the
//! synthetic demo videos.

pub mod decode;
pub mod sampling;
pub mod synth;
