//! What a synthetic video shows: its spec, and each frame drawn as RGB24.

use anyhow::ensure;
use serde::{Deserialize, Serialize};

use super::encode::VideoCodec;
use super::scene::{Placement, Scene, GAP_RGB};

/// A video to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthSpec {
    /// Frame size; both must be even (YUV 4:2:0).
    pub width: u32,
    pub height: u32,
    /// Frame rate as a rational `(num, den)`, e.g. `(30000, 1001)`.
    pub fps: (i32, i32),
    /// Number of frames; the video lasts `num_frames * den / num` seconds.
    pub num_frames: u64,
    /// Scenes in time order; frames outside every scene are plain black.
    pub scenes: Vec<Scene>,
    #[serde(default)]
    pub codec: VideoCodec,
}

impl SynthSpec {
    /// A spec lasting `seconds` (rounded to whole frames).
    pub fn new(width: u32, height: u32, fps: (i32, i32), seconds: f64, scenes: Vec<Scene>) -> Self {
        let num_frames = if fps.1 > 0 && seconds.is_finite() && seconds > 0.0 {
            (seconds * f64::from(fps.0) / f64::from(fps.1)).round().max(0.0) as u64
        } else {
            0
        };
        SynthSpec { width, height, fps, num_frames, scenes, codec: VideoCodec::default() }
    }

    pub fn fps_f64(&self) -> f64 {
        f64::from(self.fps.0) / f64::from(self.fps.1)
    }

    /// Presentation time of frame `index`, in seconds.
    pub fn frame_time_s(&self, index: u64) -> f64 {
        index as f64 * f64::from(self.fps.1) / f64::from(self.fps.0)
    }

    /// Duration of the whole video, in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frame_time_s(self.num_frames)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.width >= 2 && self.height >= 2, "frame size {}x{} is too small", self.width, self.height);
        ensure!(
            self.width.is_multiple_of(2) && self.height.is_multiple_of(2),
            "frame size {}x{} must have even width and height for YUV 4:2:0 H.264/MPEG-4",
            self.width,
            self.height
        );
        ensure!(self.width <= 8192 && self.height <= 8192, "frame size {}x{} is too large", self.width, self.height);
        ensure!(self.fps.0 > 0 && self.fps.1 > 0, "frame rate {}/{} must be positive", self.fps.0, self.fps.1);
        // MPEG-4 part 2 stores the time base denominator in 16 bits.
        ensure!(self.fps.0 <= 65535, "frame rate numerator {} is larger than 65535", self.fps.0);
        ensure!(self.num_frames > 0, "a video needs at least one frame");
        for (i, s) in self.scenes.iter().enumerate() {
            ensure!(
                s.start_s.is_finite() && s.end_s.is_finite() && s.start_s >= 0.0,
                "scene {i}: times must be finite and non-negative"
            );
            ensure!(s.end_s > s.start_s, "scene {i}: end {} is not after start {}", s.end_s, s.start_s);
        }
        Ok(())
    }

    /// The scene showing at `t` seconds (the first whose span holds it).
    pub fn scene_at(&self, t: f64) -> Option<&Scene> {
        self.scenes.iter().find(|s| s.start_s <= t && t < s.end_s)
    }

    /// Draws frame `index` into `rgb`, tightly packed RGB24 of
    /// `width * height * 3` bytes.
    pub fn render_frame(&self, index: u64, rgb: &mut [u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        assert_eq!(rgb.len(), w * h * 3, "RGB24 buffer has the wrong size");
        let t = self.frame_time_s(index);
        let scene = self.scene_at(t);
        let bg = scene.map_or(GAP_RGB, |s| s.background.rgb());
        for px in rgb.chunks_exact_mut(3) {
            px.copy_from_slice(&bg);
        }
        let Some(scene) = scene else { return };
        let progress = (t - scene.start_s) / scene.duration_s();
        let Placement { cx, cy, r } = scene.placement(progress, self.width, self.height);
        let colour = scene.colour.rgb();
        // Only the shape's bounding box needs testing.
        let x0 = (cx - r - 1.0).floor().max(0.0) as usize;
        let x1 = ((cx + r + 1.0).ceil().max(0.0) as usize).min(w);
        let y0 = (cy - r - 1.0).floor().max(0.0) as usize;
        let y1 = ((cy + r + 1.0).ceil().max(0.0) as usize).min(h);
        for y in y0..y1 {
            let dy = y as f64 + 0.5 - cy;
            let row = &mut rgb[y * w * 3..(y + 1) * w * 3];
            for x in x0..x1 {
                let dx = x as f64 + 0.5 - cx;
                if scene.shape.contains(dx, dy, r) {
                    row[x * 3..x * 3 + 3].copy_from_slice(&colour);
                }
            }
        }
    }

    /// Frame `index` as a new RGB24 buffer.
    pub fn render_rgb(&self, index: u64) -> Vec<u8> {
        let mut rgb = vec![0; self.width as usize * self.height as usize * 3];
        self.render_frame(index, &mut rgb);
        rgb
    }
}

#[cfg(test)]
mod tests {
    use crate::synth::test_support::{pixel, scene, tiny_spec};
    use crate::synth::{Background, Colour, Motion, Shape, GAP_RGB};

    #[test]
    fn rendering_places_the_shape_where_expected() {
        for shape in Shape::ALL {
            let mut spec = tiny_spec((10, 1), 1.0);
            spec.scenes = vec![scene(0.0, 1.0, shape, Colour::Green, Motion::Right)];
            let w = spec.width;
            // Frame 0: the shape's centre is at the left end of its path;
            // the right edge shows background.
            let first = spec.render_rgb(0);
            let p = spec.scenes[0].placement(0.0, w, spec.height);
            assert!(p.cx < f64::from(w) / 2.0);
            assert_eq!(pixel(&first, w, p.cx as u32, p.cy as u32), Colour::Green.rgb());
            assert_eq!(pixel(&first, w, w - 1, p.cy as u32), Background::Grey.rgb());
            // Last frame: it has crossed to the right half.
            let last = spec.render_rgb(spec.num_frames - 1);
            let q = spec.scenes[0].placement(0.9, w, spec.height);
            assert!(q.cx > f64::from(w) / 2.0);
            assert_eq!(pixel(&last, w, q.cx as u32, q.cy as u32), Colour::Green.rgb());
            assert_eq!(pixel(&last, w, 0, q.cy as u32), Background::Grey.rgb());
        }
        // Grow: small at first, so a point near the edge of the final size
        // is background at the start and shape colour at the end.
        let mut spec = tiny_spec((10, 1), 1.0);
        spec.scenes = vec![scene(0.0, 1.0, Shape::Square, Colour::Yellow, Motion::Grow)];
        let (x, y) = (32 + 12, 24);
        assert_eq!(pixel(&spec.render_rgb(0), 64, x, y), Background::Grey.rgb());
        assert_eq!(pixel(&spec.render_rgb(9), 64, x, y), Colour::Yellow.rgb());
        // No scene covers the time: a plain gap frame.
        spec.scenes[0].start_s = 0.5;
        assert!(spec.render_rgb(0).chunks(3).all(|p| p == GAP_RGB));
    }
}
