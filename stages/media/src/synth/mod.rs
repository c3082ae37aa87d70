//! Deterministic synthetic narrated videos.
//!
//! Each video is a sequence of scenes; a scene shows one coloured shape
//! moving over a plain background. Frames are drawn in plain Rust as RGB24,
//! converted to YUV420P with swscale and encoded to H.264 (libx264) or, when
//! libx264 is missing, MPEG-4 part 2, in an MP4 container. Every scene comes
//! with narration (WebVTT) that says what is visible, so a small video-text
//! model can learn to match the two, and held-out videos get Charades-STA
//! grounding annotations.
//!
//! Everything here is a pure function of its inputs: the same spec (or demo
//! seed) gives byte-identical files on the same FFmpeg build.

mod demo_set;
mod encode;
mod narration;
mod render;
mod scene;

pub use demo_set::{
    demo_set, grounding_set, write_corpus, write_demo_set, DemoManifest, DemoVideo, ManifestVideo, Split, DEMO_HELDOUT,
    DEMO_VIDEOS, GROUNDING_SCENES, GROUNDING_VIDEOS,
};
pub use encode::{write_video, VideoCodec};
pub use narration::{narration_webvtt, scene_sentence, vtt_timestamp};
pub use render::SynthSpec;
pub use scene::{Background, Colour, Motion, Placement, Scene, Shape, GAP_RGB};

/// Bumped whenever rendering, encoding settings or the demo-set recipe
/// change, so that `write_demo_set` regenerates a stale set.
pub const GENERATOR_VERSION: u32 = 1;

#[cfg(test)]
mod test_support {
    use super::{Background, Colour, Motion, Scene, Shape, SynthSpec};

    pub(super) fn scene(start_s: f64, end_s: f64, shape: Shape, colour: Colour, motion: Motion) -> Scene {
        Scene { start_s, end_s, shape, colour, motion, background: Background::Grey }
    }

    /// A 64x48 video of two scenes: a red circle moving right, then a blue
    /// square moving down, both on grey.
    pub(super) fn tiny_spec(fps: (i32, i32), seconds: f64) -> SynthSpec {
        SynthSpec::new(
            64,
            48,
            fps,
            seconds,
            vec![
                scene(0.0, seconds / 2.0, Shape::Circle, Colour::Red, Motion::Right),
                scene(seconds / 2.0, seconds, Shape::Square, Colour::Blue, Motion::Down),
            ],
        )
    }

    /// The pixel at (`x`, `y`) of tightly packed RGB24 `width` pixels wide.
    pub(super) fn pixel(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * width as usize + x as usize) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }
}
