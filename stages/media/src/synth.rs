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

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};
use ffmpeg::{codec, encoder, format, frame, software, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Bumped whenever rendering, encoding settings or the demo-set recipe
/// change, so that `write_demo_set` regenerates a stale set.
pub const GENERATOR_VERSION: u32 = 1;

/// The shape drawn in a scene. Each is symmetric about its centre pixel, so
/// the centre always carries the shape's colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Square,
    Circle,
    Triangle,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 5] = [Shape::Square, Shape::Circle, Shape::Triangle, Shape::Diamond, Shape::Cross];

    /// The word used in narration and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Square => "square",
            Shape::Circle => "circle",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    /// Whether the offset (`dx`, `dy`) from the centre lies inside a shape
    /// of half-extent `r`.
    fn contains(self, dx: f64, dy: f64, r: f64) -> bool {
        match self {
            Shape::Square => dx.abs() <= r && dy.abs() <= r,
            Shape::Circle => dx * dx + dy * dy <= r * r,
            // Apex up at (0, -r), base from (-r, r) to (r, r).
            Shape::Triangle => dy >= -r && dy <= r && dx.abs() <= (dy + r) * 0.5,
            Shape::Diamond => dx.abs() + dy.abs() <= r,
            Shape::Cross => {
                let arm = r * 0.35;
                (dx.abs() <= arm && dy.abs() <= r) || (dy.abs() <= arm && dx.abs() <= r)
            }
        }
    }
}

/// The shape's colour. Saturated and far apart so they survive chroma
/// subsampling, compression and downscaling to 112x112.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    White,
}

impl Colour {
    pub const ALL: [Colour; 6] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::White];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::White => "white",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [230, 40, 40],
            Colour::Green => [40, 200, 60],
            Colour::Blue => [50, 100, 240],
            Colour::Yellow => [240, 220, 40],
            Colour::Purple => [160, 60, 200],
            Colour::White => [240, 240, 240],
        }
    }
}

/// How the shape moves during its scene. Movements go from one side of the
/// frame to the other over the whole scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Motion {
    Left,
    Right,
    Up,
    Down,
    Grow,
    Shrink,
    Still,
}

impl Motion {
    pub const ALL: [Motion; 7] =
        [Motion::Left, Motion::Right, Motion::Up, Motion::Down, Motion::Grow, Motion::Shrink, Motion::Still];

    pub fn name(self) -> &'static str {
        match self {
            Motion::Left => "left",
            Motion::Right => "right",
            Motion::Up => "up",
            Motion::Down => "down",
            Motion::Grow => "grow",
            Motion::Shrink => "shrink",
            Motion::Still => "still",
        }
    }

    /// Third-person verb phrase: "a red circle {moves to the left}".
    fn verb(self) -> &'static str {
        match self {
            Motion::Left => "moves to the left",
            Motion::Right => "moves to the right",
            Motion::Up => "moves up",
            Motion::Down => "moves down",
            Motion::Grow => "grows bigger",
            Motion::Shrink => "shrinks",
            Motion::Still => "stays still in the middle",
        }
    }

    /// Gerund phrase: "a red circle {moving to the left}".
    fn gerund(self) -> &'static str {
        match self {
            Motion::Left => "moving to the left",
            Motion::Right => "moving to the right",
            Motion::Up => "moving up",
            Motion::Down => "moving down",
            Motion::Grow => "growing bigger",
            Motion::Shrink => "shrinking",
            Motion::Still => "staying still",
        }
    }
}

/// The plain background of a scene. All are dark so every shape colour
/// stands out against every background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    Black,
    Grey,
    Navy,
    Brown,
}

impl Background {
    pub const ALL: [Background; 4] = [Background::Black, Background::Grey, Background::Navy, Background::Brown];

    pub fn name(self) -> &'static str {
        match self {
            Background::Black => "black",
            Background::Grey => "grey",
            Background::Navy => "navy",
            Background::Brown => "brown",
        }
    }

    /// How narration says it.
    fn words(self) -> &'static str {
        match self {
            Background::Black => "black",
            Background::Grey => "grey",
            Background::Navy => "dark blue",
            Background::Brown => "dark brown",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Black => [8, 8, 8],
            Background::Grey => [72, 72, 72],
            Background::Navy => [16, 24, 72],
            Background::Brown => [64, 40, 24],
        }
    }
}

/// The colour of frames (or parts of the timeline) that no scene covers.
pub const GAP_RGB: [u8; 3] = [0, 0, 0];

/// One scene: from `start_s` (inclusive) to `end_s` (exclusive) seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub start_s: f64,
    pub end_s: f64,
    pub shape: Shape,
    pub colour: Colour,
    pub motion: Motion,
    pub background: Background,
}

/// Where the shape is and how big, in pixels, at a point of a scene.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Centre, in pixel coordinates (pixel `x` covers `[x, x + 1)`).
    pub cx: f64,
    pub cy: f64,
    /// Half-extent: the shape fits in a `2r` x `2r` box around the centre.
    pub r: f64,
}

impl Scene {
    /// Placement of the shape at `progress` (0 at the scene's start, 1 at
    /// its end) in a `width` x `height` frame.
    pub fn placement(&self, progress: f64, width: u32, height: u32) -> Placement {
        let (w, h) = (f64::from(width), f64::from(height));
        let m = w.min(h);
        let p = progress.clamp(0.0, 1.0);
        let r = m * 0.18;
        // Travel keeps the whole shape inside the frame, so every frame of
        // a scene shows the complete shape.
        let lerp = |a: f64, b: f64| a + (b - a) * p;
        let (x_lo, x_hi) = (r * 1.1, w - r * 1.1);
        let (y_lo, y_hi) = (r * 1.1, h - r * 1.1);
        let (cx, cy) = (w * 0.5, h * 0.5);
        match self.motion {
            Motion::Left => Placement { cx: lerp(x_hi, x_lo), cy, r },
            Motion::Right => Placement { cx: lerp(x_lo, x_hi), cy, r },
            Motion::Up => Placement { cx, cy: lerp(y_hi, y_lo), r },
            Motion::Down => Placement { cx, cy: lerp(y_lo, y_hi), r },
            Motion::Grow => Placement { cx, cy, r: lerp(m * 0.06, m * 0.32) },
            Motion::Shrink => Placement { cx, cy, r: lerp(m * 0.32, m * 0.06) },
            Motion::Still => Placement { cx, cy, r },
        }
    }

    fn duration_s(&self) -> f64 {
        self.end_s - self.start_s
    }
}

/// Which encoder `write_video` should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// H.264 through libx264; MPEG-4 part 2 when libx264 is not available.
    #[default]
    H264,
    /// Always FFmpeg's native MPEG-4 part 2 encoder.
    Mpeg4,
}

impl VideoCodec {
    /// The FFmpeg encoder `write_video` will use for this choice, or `None`
    /// when no suitable encoder is compiled into FFmpeg.
    pub fn encoder_name(self) -> Option<&'static str> {
        crate::decode::init_ffmpeg();
        if self == VideoCodec::H264 && encoder::find_by_name("libx264").is_some() {
            return Some("libx264");
        }
        encoder::find(codec::Id::MPEG4).map(|_| "mpeg4")
    }
}

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

/// Renders `spec` and writes it to `path` as an MP4 (whatever the file's
/// extension). Returns the number of frames written, always
/// `spec.num_frames`. The file appears only when complete: it is written
/// next to `path` under a temporary name and renamed.
pub fn write_video(spec: &SynthSpec, path: &Path) -> anyhow::Result<u64> {
    spec.validate()?;
    let partial = partial_path(path);
    let result = encode_to(spec, &partial);
    match result {
        Ok(frames) => {
            fs::rename(&partial, path)
                .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
            Ok(frames)
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e.context(format!("writing synthetic video {}", path.display())))
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn encode_to(spec: &SynthSpec, path: &Path) -> anyhow::Result<u64> {
    crate::decode::init_ffmpeg();
    let encoder_name = spec.codec.encoder_name().context("FFmpeg has neither libx264 nor the mpeg4 encoder")?;
    let codec =
        encoder::find_by_name(encoder_name).with_context(|| format!("FFmpeg encoder {encoder_name} not found"))?;
    let is_x264 = encoder_name == "libx264";

    let mut octx = format::output_as(path, "mp4").with_context(|| format!("opening {} for writing", path.display()))?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);

    let frame_rate = Rational(spec.fps.0, spec.fps.1);
    // One tick per frame: pts is the frame index.
    let enc_tb = Rational(spec.fps.1, spec.fps.0);

    let mut enc = codec::context::Context::new_with_codec(codec).encoder().video()?;
    enc.set_width(spec.width);
    enc.set_height(spec.height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(enc_tb);
    enc.set_frame_rate(Some(frame_rate));
    enc.set_aspect_ratio(Rational(1, 1));
    // A key frame at least every two seconds keeps seeking for clip
    // sampling cheap, as in typical web video.
    let fps_round = (spec.fps_f64().round() as u32).max(1);
    enc.set_gop(fps_round * 2);
    enc.set_colorspace(ffmpeg::color::Space::SMPTE170M);
    enc.set_color_range(ffmpeg::color::Range::MPEG);
    // Single-threaded encoding and bit-exact mode make the output a pure
    // function of the input frames.
    enc.set_threading(codec::threading::Config { kind: codec::threading::Type::None, count: 1, ..Default::default() });
    let mut flags = codec::Flags::BITEXACT;
    if global_header {
        flags |= codec::Flags::GLOBAL_HEADER;
    }
    let mut opts = Dictionary::new();
    opts.set("threads", "1");
    if is_x264 {
        opts.set("preset", "medium");
        opts.set("crf", "28");
        // x264 otherwise reports its statistics on stderr for every file.
        opts.set("x264-params", "log=-1");
    } else {
        flags |= codec::Flags::QSCALE;
        enc.set_global_quality(6 * ffmpeg::ffi::FF_QP2LAMBDA);
        enc.set_max_b_frames(0);
    }
    enc.set_flags(flags);
    let mut enc = enc.open_with(opts).with_context(|| format!("opening the {encoder_name} encoder"))?;

    let stream_index = {
        let mut ost = octx.add_stream(codec)?;
        ost.set_parameters(&enc);
        ost.set_time_base(enc_tb);
        ost.set_rate(frame_rate);
        ost.set_avg_frame_rate(frame_rate);
        ost.index()
    };
    let mut mux_opts = Dictionary::new();
    // Keeps FFmpeg version strings out of the container.
    mux_opts.set("fflags", "+bitexact");
    octx.write_header_with(mux_opts).context("writing the MP4 header")?;
    let ost_tb = octx.stream(stream_index).context("output stream vanished")?.time_base();

    let (w, h) = (spec.width, spec.height);
    let mut scaler = software::scaling::Context::get(
        format::Pixel::RGB24,
        w,
        h,
        format::Pixel::YUV420P,
        w,
        h,
        software::scaling::Flags::POINT | software::scaling::Flags::ACCURATE_RND | software::scaling::Flags::BITEXACT,
    )
    .context("creating the RGB to YUV converter")?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    let mut rgb_frame = frame::Video::new(format::Pixel::RGB24, w, h);
    let mut packets = 0u64;

    let mut drain = |enc: &mut encoder::Video, octx: &mut format::context::Output| {
        let mut pkt = Packet::empty();
        while enc.receive_packet(&mut pkt).is_ok() {
            // Encoders leave the duration unset; without it the MP4's last
            // sample would last zero ticks and the video would look one
            // frame short.
            if pkt.duration() <= 0 {
                pkt.set_duration(1);
            }
            pkt.set_stream(stream_index);
            pkt.set_position(-1);
            pkt.rescale_ts(enc_tb, ost_tb);
            pkt.write_interleaved(octx)?;
            packets += 1;
        }
        Ok::<(), ffmpeg::Error>(())
    };

    for index in 0..spec.num_frames {
        spec.render_frame(index, &mut rgb);
        copy_into_frame(&rgb, &mut rgb_frame);
        // A fresh output frame each time: the encoder may keep a reference
        // to frames it has been sent (B-frame reordering).
        let mut yuv = frame::Video::empty();
        scaler.run(&rgb_frame, &mut yuv)?;
        yuv.set_pts(Some(index as i64));
        enc.send_frame(&yuv).with_context(|| format!("encoding frame {index}"))?;
        drain(&mut enc, &mut octx).context("writing packets")?;
    }
    enc.send_eof().context("flushing the encoder")?;
    drain(&mut enc, &mut octx).context("writing packets")?;
    octx.write_trailer().context("writing the MP4 trailer")?;
    drop(octx);

    if packets != spec.num_frames {
        bail!("encoder produced {packets} packets for {} frames", spec.num_frames);
    }
    Ok(packets)
}

/// Copies tightly packed RGB24 into a frame whose rows may be padded.
fn copy_into_frame(rgb: &[u8], frame: &mut frame::Video) {
    let row_bytes = frame.width() as usize * 3;
    let stride = frame.stride(0);
    let data = frame.data_mut(0);
    for (y, src) in rgb.chunks_exact(row_bytes).enumerate() {
        data[y * stride..y * stride + row_bytes].copy_from_slice(src);
    }
}

/// Narration for a scene; `variant` picks the wording.
fn first_cue_text(scene: &Scene, variant: usize) -> String {
    let (c, s) = (scene.colour.name(), scene.shape.name());
    let m = scene.motion;
    match variant % 5 {
        0 => format!("a {c} {s} {}", m.verb()),
        1 => format!("here we see a {c} {s} {}", m.gerund()),
        2 => format!("now there is a {c} {s} {} on a {} background", m.gerund(), scene.background.words()),
        3 => format!("watch the {c} {s} as it {}", m.verb()),
        _ => format!("next up a {c} {s} that {}", m.verb()),
    }
}

fn second_cue_text(scene: &Scene, variant: usize) -> String {
    let (c, s) = (scene.colour.name(), scene.shape.name());
    let m = scene.motion;
    match variant % 4 {
        0 => format!("the {c} {s} keeps {}", m.gerund()),
        1 => format!("you can see the {c} {s} against the {} background", scene.background.words()),
        2 => format!("still {} is the {c} {s}", m.gerund()),
        _ => format!("so the {s} is {c} and it {}", m.verb()),
    }
}

/// Deterministic wording choice: varies with the scene's position and
/// content, so repeated scenes in a set are not all narrated alike.
fn variant(index: usize, scene: &Scene) -> usize {
    index * 7 + scene.shape as usize * 3 + scene.colour as usize * 5 + scene.motion as usize * 11
}

/// The sentence describing a scene, as used for grounding queries:
/// "a red circle moves to the left."
pub fn scene_sentence(scene: &Scene) -> String {
    format!("{}.", first_cue_text(scene, 0))
}

/// `hh:mm:ss.mmm`, rounded to the millisecond.
pub fn vtt_timestamp(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// A WebVTT file narrating `scenes`: one cue per scene, two for scenes of
/// three seconds or more (split at the middle, as ASR splits speech).
pub fn narration_webvtt(scenes: &[Scene]) -> String {
    let mut out = String::from("WEBVTT\n");
    for (i, scene) in scenes.iter().enumerate() {
        let v = variant(i, scene);
        let (start_ms, end_ms) = (ms(scene.start_s), ms(scene.end_s));
        if end_ms <= start_ms {
            continue;
        }
        if scene.duration_s() >= 3.0 {
            let mid_ms = start_ms + (end_ms - start_ms) / 2;
            push_cue(&mut out, start_ms, mid_ms, &first_cue_text(scene, v));
            push_cue(&mut out, mid_ms, end_ms, &second_cue_text(scene, v));
        } else {
            push_cue(&mut out, start_ms, end_ms, &first_cue_text(scene, v));
        }
    }
    out
}

fn ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

fn push_cue(out: &mut String, start_ms: u64, end_ms: u64, text: &str) {
    let _ = write!(
        out,
        "\n{} --> {}\n{}\n",
        vtt_timestamp(start_ms as f64 / 1000.0),
        vtt_timestamp(end_ms as f64 / 1000.0),
        text
    );
}

/// Which part of the demo set a video belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    /// Also the folder name under the demo directory.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoVideo {
    pub id: String,
    pub split: Split,
    pub spec: SynthSpec,
}

/// Number of videos in the demo set, and how many of them are held out.
pub const DEMO_VIDEOS: usize = 32;
pub const DEMO_HELDOUT: usize = 8;

const DEMO_SIZES: [(u32, u32); 4] = [(320, 240), (256, 144), (176, 144), (240, 320)];
const DEMO_RATES: [(i32, i32); 3] = [(24, 1), (25, 1), (30, 1)];

/// Frame size and frame rate of one demo video.
type DemoFormat = ((u32, u32), (i32, i32));

/// The demo set for `seed`: 32 videos of 4-10 s with 2-4 scenes each, 8 of
/// them held out. Every split has every frame size and frame rate, and one
/// video at 30000/1001 fps.
pub fn demo_set(seed: u64) -> Vec<DemoVideo> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..DEMO_VIDEOS).collect();
    order.shuffle(&mut rng);
    let mut split = [Split::Train; DEMO_VIDEOS];
    for &i in &order[..DEMO_HELDOUT] {
        split[i] = Split::Heldout;
    }

    // Balanced, shuffled sizes and rates per split.
    let mut formats: [Option<DemoFormat>; DEMO_VIDEOS] = [None; DEMO_VIDEOS];
    for which in [Split::Train, Split::Heldout] {
        let slots: Vec<usize> = (0..DEMO_VIDEOS).filter(|&i| split[i] == which).collect();
        let mut sizes: Vec<(u32, u32)> = (0..slots.len()).map(|k| DEMO_SIZES[k % DEMO_SIZES.len()]).collect();
        let mut rates: Vec<(i32, i32)> = (0..slots.len()).map(|k| DEMO_RATES[k % DEMO_RATES.len()]).collect();
        sizes.shuffle(&mut rng);
        rates.shuffle(&mut rng);
        if let Some(r) = rates.iter_mut().find(|r| **r == (30, 1)) {
            *r = (30000, 1001);
        }
        for (k, &slot) in slots.iter().enumerate() {
            formats[slot] = Some((sizes[k], rates[k]));
        }
    }

    (0..DEMO_VIDEOS)
        .map(|i| {
            let ((width, height), fps) = formats[i].expect("every slot has a format");
            let seconds = f64::from(rng.random_range(8u32..=20)) * 0.5;
            let max_scenes = ((seconds / 1.5).floor() as usize).clamp(2, 4);
            let n = rng.random_range(2..=max_scenes);
            let scenes = random_scenes(&mut rng, seconds, n);
            DemoVideo {
                id: format!("demo{i:03}"),
                split: split[i],
                spec: SynthSpec::new(width, height, fps, seconds, scenes),
            }
        })
        .collect()
}

/// `n` scenes tiling `[0, seconds)`, cut at tenths of a second, each
/// differing from the previous one in shape, colour and motion so that
/// every cut is visible.
fn random_scenes(rng: &mut ChaCha8Rng, seconds: f64, n: usize) -> Vec<Scene> {
    let weights: Vec<f64> = (0..n).map(|_| rng.random_range(2.0..3.0)).collect();
    let total: f64 = weights.iter().sum();
    let mut cuts = vec![0.0];
    let mut acc = 0.0;
    for w in &weights[..n - 1] {
        acc += w;
        cuts.push((seconds * acc / total * 10.0).round() / 10.0);
    }
    cuts.push(seconds);

    let mut scenes: Vec<Scene> = Vec::with_capacity(n);
    for k in 0..n {
        let prev = scenes.last().copied();
        let shape = pick(rng, &Shape::ALL, prev.map(|p| p.shape));
        let colour = pick(rng, &Colour::ALL, prev.map(|p| p.colour));
        let motion = pick(rng, &Motion::ALL, prev.map(|p| p.motion));
        let background = Background::ALL[rng.random_range(0..Background::ALL.len())];
        scenes.push(Scene { start_s: cuts[k], end_s: cuts[k + 1], shape, colour, motion, background });
    }
    scenes
}

fn pick<T: Copy + PartialEq>(rng: &mut ChaCha8Rng, all: &[T], not: Option<T>) -> T {
    let choices: Vec<T> = all.iter().copied().filter(|&x| Some(x) != not).collect();
    choices[rng.random_range(0..choices.len())]
}

/// What `write_demo_set` wrote, as stored in `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoManifest {
    pub generator_version: u32,
    pub seed: u64,
    /// The FFmpeg encoder used: `libx264` or `mpeg4`.
    pub encoder: String,
    pub videos: Vec<ManifestVideo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestVideo {
    pub id: String,
    pub split: Split,
    /// Paths relative to the demo directory.
    pub video: String,
    pub narration: String,
    pub width: u32,
    pub height: u32,
    pub fps: (i32, i32),
    pub num_frames: u64,
    pub duration_s: f64,
    pub scenes: Vec<Scene>,
}

impl DemoManifest {
    /// JSON in the layout serde's derive gives these types, written by hand
    /// so this crate needs no JSON library; the text is stable, which is
    /// what the idempotency check compares.
    pub fn to_json(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "{{");
        let _ = writeln!(o, "  \"generator_version\": {},", self.generator_version);
        let _ = writeln!(o, "  \"seed\": {},", self.seed);
        let _ = writeln!(o, "  \"encoder\": {},", json_str(&self.encoder));
        let _ = writeln!(o, "  \"videos\": [");
        for (i, v) in self.videos.iter().enumerate() {
            let _ = writeln!(o, "    {{");
            let _ = writeln!(o, "      \"id\": {},", json_str(&v.id));
            let _ = writeln!(o, "      \"split\": \"{}\",", v.split.name());
            let _ = writeln!(o, "      \"video\": {},", json_str(&v.video));
            let _ = writeln!(o, "      \"narration\": {},", json_str(&v.narration));
            let _ = writeln!(o, "      \"width\": {},", v.width);
            let _ = writeln!(o, "      \"height\": {},", v.height);
            let _ = writeln!(o, "      \"fps\": [{}, {}],", v.fps.0, v.fps.1);
            let _ = writeln!(o, "      \"num_frames\": {},", v.num_frames);
            let _ = writeln!(o, "      \"duration_s\": {},", json_f64(v.duration_s));
            let _ = writeln!(o, "      \"scenes\": [");
            for (k, s) in v.scenes.iter().enumerate() {
                let _ = write!(
                    o,
                    "        {{\"start_s\": {}, \"end_s\": {}, \"shape\": \"{}\", \"colour\": \"{}\", \"motion\": \"{}\", \"background\": \"{}\"}}",
                    json_f64(s.start_s),
                    json_f64(s.end_s),
                    s.shape.name(),
                    s.colour.name(),
                    s.motion.name(),
                    s.background.name()
                );
                let _ = writeln!(o, "{}", if k + 1 < v.scenes.len() { "," } else { "" });
            }
            let _ = writeln!(o, "      ]");
            let _ = writeln!(o, "    }}{}", if i + 1 < self.videos.len() { "," } else { "" });
        }
        let _ = writeln!(o, "  ]");
        let _ = writeln!(o, "}}");
        o
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Shortest round-tripping decimal; whole numbers keep a ".0" so readers
/// see a float.
fn json_f64(x: f64) -> String {
    let s = format!("{x}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// Writes the demo set for `seed` under `dir`:
///
/// ```text
/// dir/manifest.json
/// dir/train/videos/<id>.mp4      dir/train/narration/<id>.vtt
/// dir/heldout/videos/<id>.mp4    dir/heldout/narration/<id>.vtt
/// dir/heldout/grounding.txt      (Charades-STA: `id start end##sentence`)
/// ```
///
/// Does nothing when `manifest.json` already matches what would be written
/// and every file it lists exists. The manifest is written last, so an
/// interrupted run is redone in full next time.
pub fn write_demo_set(dir: &Path, seed: u64) -> anyhow::Result<DemoManifest> {
    write_set(dir, seed, &demo_set(seed))
}

fn write_set(dir: &Path, seed: u64, videos: &[DemoVideo]) -> anyhow::Result<DemoManifest> {
    let encoder = VideoCodec::H264.encoder_name().context("FFmpeg has neither libx264 nor the mpeg4 encoder")?;
    let manifest = DemoManifest {
        generator_version: GENERATOR_VERSION,
        seed,
        encoder: encoder.to_string(),
        videos: videos
            .iter()
            .map(|v| ManifestVideo {
                id: v.id.clone(),
                split: v.split,
                video: format!("{}/videos/{}.mp4", v.split.name(), v.id),
                narration: format!("{}/narration/{}.vtt", v.split.name(), v.id),
                width: v.spec.width,
                height: v.spec.height,
                fps: v.spec.fps,
                num_frames: v.spec.num_frames,
                duration_s: v.spec.duration_s(),
                scenes: v.spec.scenes.clone(),
            })
            .collect(),
    };
    let json = manifest.to_json();
    let manifest_path = dir.join("manifest.json");
    if is_complete(dir, &manifest, &json) {
        return Ok(manifest);
    }

    for split in [Split::Train, Split::Heldout] {
        for sub in ["videos", "narration"] {
            let d = dir.join(split.name()).join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    let mut grounding = String::new();
    for (v, m) in videos.iter().zip(&manifest.videos) {
        let frames = write_video(&v.spec, &dir.join(&m.video))?;
        ensure!(frames == v.spec.num_frames, "{}: wrote {frames} frames, expected {}", v.id, v.spec.num_frames);
        write_atomic(&dir.join(&m.narration), &narration_webvtt(&v.spec.scenes))?;
        if v.split == Split::Heldout {
            let duration = v.spec.duration_s();
            for s in &v.spec.scenes {
                let end = s.end_s.min(duration);
                if end <= s.start_s {
                    continue;
                }
                let _ = writeln!(grounding, "{} {:.2} {:.2}##{}", v.id, s.start_s, end, scene_sentence(s));
            }
        }
    }
    write_atomic(&dir.join(Split::Heldout.name()).join("grounding.txt"), &grounding)?;
    write_atomic(&manifest_path, &json)?;
    Ok(manifest)
}

fn is_complete(dir: &Path, manifest: &DemoManifest, json: &str) -> bool {
    let same = fs::read_to_string(dir.join("manifest.json")).is_ok_and(|old| old == json);
    let non_empty = |p: PathBuf| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0);
    same && manifest.videos.iter().all(|v| non_empty(dir.join(&v.video)) && dir.join(&v.narration).is_file())
        && dir.join(Split::Heldout.name()).join("grounding.txt").is_file()
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let partial = partial_path(path);
    fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene(start_s: f64, end_s: f64, shape: Shape, colour: Colour, motion: Motion) -> Scene {
        Scene { start_s, end_s, shape, colour, motion, background: Background::Grey }
    }

    fn tiny_spec(fps: (i32, i32), seconds: f64) -> SynthSpec {
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

    /// Decodes every frame of `path`: (frame count, width, height, first
    /// frame as RGB24 packed).
    fn decode_all(path: &Path) -> (u64, u32, u32, Vec<u8>) {
        ffmpeg::init().unwrap();
        let mut ictx = format::input(path).unwrap();
        let stream = ictx.streams().best(ffmpeg::media::Type::Video).unwrap();
        let index = stream.index();
        let mut dec = codec::context::Context::from_parameters(stream.parameters()).unwrap().decoder().video().unwrap();
        let (w, h) = (dec.width(), dec.height());
        let mut scaler = software::scaling::Context::get(
            dec.format(),
            w,
            h,
            format::Pixel::RGB24,
            w,
            h,
            software::scaling::Flags::POINT,
        )
        .unwrap();
        let mut count = 0u64;
        let mut first = Vec::new();
        let mut frame = frame::Video::empty();
        let mut take = |dec: &mut ffmpeg::decoder::Video, count: &mut u64, first: &mut Vec<u8>| {
            while dec.receive_frame(&mut frame).is_ok() {
                if *count == 0 {
                    let mut rgb = frame::Video::empty();
                    scaler.run(&frame, &mut rgb).unwrap();
                    let stride = rgb.stride(0);
                    for y in 0..h as usize {
                        first.extend_from_slice(&rgb.data(0)[y * stride..y * stride + w as usize * 3]);
                    }
                }
                *count += 1;
            }
        };
        for (s, packet) in ictx.packets() {
            if s.index() == index {
                dec.send_packet(&packet).unwrap();
                take(&mut dec, &mut count, &mut first);
            }
        }
        dec.send_eof().unwrap();
        take(&mut dec, &mut count, &mut first);
        (count, w, h, first)
    }

    fn pixel(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * width as usize + x as usize) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }

    fn close(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
        a.iter().zip(b).all(|(&x, y)| (i32::from(x) - i32::from(y)).abs() <= tol)
    }

    #[test]
    fn written_video_decodes_to_expected_frames_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mp4");
        let spec = tiny_spec((25, 1), 0.8);
        assert_eq!(spec.num_frames, 20);
        assert_eq!(write_video(&spec, &path).unwrap(), 20);
        assert!(!partial_path(&path).exists());
        let (count, w, h, first) = decode_all(&path);
        assert_eq!((count, w, h), (20, 64, 48));
        // First frame: the red circle at the left end of its path, on grey.
        let p = spec.scenes[0].placement(0.0, 64, 48);
        let centre = pixel(&first, 64, p.cx as u32, p.cy as u32);
        assert!(close(centre, Colour::Red.rgb(), 40), "centre {centre:?}");
        let corner = pixel(&first, 64, 62, 2);
        assert!(close(corner, Background::Grey.rgb(), 24), "corner {corner:?}");
    }

    #[test]
    fn stream_timing_matches_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ntsc.mp4");
        let spec = tiny_spec((30000, 1001), 0.5);
        assert_eq!(spec.num_frames, 15);
        write_video(&spec, &path).unwrap();
        ffmpeg::init().unwrap();
        let ictx = format::input(&path).unwrap();
        let stream = ictx.streams().best(ffmpeg::media::Type::Video).unwrap();
        assert_eq!(stream.avg_frame_rate(), Rational(30000, 1001));
        assert_eq!(stream.frames(), 15);
        let duration = stream.duration() as f64 * f64::from(stream.time_base());
        assert!((duration - spec.duration_s()).abs() < 1e-3, "duration {duration}");
    }

    #[test]
    fn same_spec_gives_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spec = tiny_spec((24, 1), 0.75);
        let (a, b) = (dir.path().join("a.mp4"), dir.path().join("b.mp4"));
        write_video(&spec, &a).unwrap();
        write_video(&spec, &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    }

    #[test]
    fn mpeg4_fallback_encodes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.mp4");
        let mut spec = tiny_spec((25, 1), 0.4);
        spec.codec = VideoCodec::Mpeg4;
        assert_eq!(write_video(&spec, &path).unwrap(), 10);
        assert_eq!(decode_all(&path).0, 10);
    }

    #[test]
    fn odd_sizes_and_bad_rates_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.mp4");
        let mut spec = tiny_spec((25, 1), 0.4);
        spec.width = 63;
        let err = write_video(&spec, &path).unwrap_err();
        assert!(err.to_string().contains("even"), "{err}");
        assert!(!path.exists() && !partial_path(&path).exists());
        let mut spec = tiny_spec((25, 1), 0.4);
        spec.fps = (0, 1);
        assert!(spec.validate().is_err());
    }

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

    /// Parses basic WebVTT: the header, then cues of `start --> end` and
    /// text lines, separated by blank lines. Returns (start, end, text).
    fn parse_vtt(text: &str) -> Vec<(f64, f64, String)> {
        fn time(s: &str) -> f64 {
            let parts: Vec<&str> = s.split(':').collect();
            assert_eq!(parts.len(), 3, "time {s}");
            assert!(parts[0].len() >= 2 && parts[1].len() == 2, "time {s}");
            let (sec, milli) = parts[2].split_once('.').expect("milliseconds");
            assert_eq!((sec.len(), milli.len()), (2, 3), "time {s}");
            let m: u32 = parts[1].parse().unwrap();
            let sc: u32 = sec.parse().unwrap();
            assert!(m < 60 && sc < 60);
            f64::from(parts[0].parse::<u32>().unwrap()) * 3600.0
                + f64::from(m) * 60.0
                + f64::from(sc)
                + f64::from(milli.parse::<u32>().unwrap()) / 1000.0
        }
        let mut blocks = text.split("\n\n");
        assert_eq!(blocks.next().unwrap().trim_end(), "WEBVTT");
        let mut cues = Vec::new();
        for block in blocks {
            let mut lines = block.lines();
            let timing = lines.next().expect("timing line");
            let (a, b) = timing.split_once(" --> ").expect("arrow");
            let body: Vec<&str> = lines.collect();
            assert!(!body.is_empty() && body.iter().all(|l| !l.trim().is_empty()));
            assert!(body.iter().all(|l| !l.contains("-->")));
            cues.push((time(a), time(b), body.join(" ")));
        }
        assert!(text.ends_with('\n'));
        cues
    }

    #[test]
    fn narration_is_valid_webvtt_naming_colour_and_shape() {
        let scenes = vec![
            scene(0.0, 2.5, Shape::Circle, Colour::Red, Motion::Left),
            scene(2.5, 6.2, Shape::Triangle, Colour::Yellow, Motion::Grow),
            scene(6.2, 3725.5, Shape::Cross, Colour::Purple, Motion::Still),
        ];
        let vtt = narration_webvtt(&scenes);
        let cues = parse_vtt(&vtt);
        assert_eq!(cues.len(), 5);
        let mut prev_end = 0.0;
        for (start, end, _) in &cues {
            assert!(end > start && *start >= prev_end - 1e-9);
            prev_end = *end;
        }
        assert_eq!(cues[0].0, 0.0);
        assert!((cues[4].1 - 3725.5).abs() < 1e-9);
        assert!(vtt.contains("01:02:05.500"));
        for s in &scenes {
            let inside: Vec<&String> = cues
                .iter()
                .filter(|(a, b, _)| *a >= s.start_s - 1e-9 && *b <= s.end_s + 1e-9)
                .map(|(_, _, t)| t)
                .collect();
            assert!(!inside.is_empty());
            for t in inside {
                assert!(t.contains(s.colour.name()) && t.contains(s.shape.name()), "{t}");
            }
        }
        assert_eq!(scene_sentence(&scenes[0]), "a red circle moves to the left.");
    }

    #[test]
    fn narration_wording_varies() {
        let set = demo_set(3);
        let mut texts = std::collections::HashSet::new();
        for v in &set {
            for (_, _, t) in parse_vtt(&narration_webvtt(&v.spec.scenes)) {
                let s = &t;
                texts.insert(s.split(' ').take(2).collect::<Vec<_>>().join(" "));
            }
        }
        assert!(texts.len() >= 5, "{texts:?}");
    }

    #[test]
    fn demo_set_is_deterministic_and_balanced() {
        let a = demo_set(7);
        assert_eq!(a, demo_set(7));
        assert_ne!(a, demo_set(8));
        assert_eq!(a.len(), DEMO_VIDEOS);
        let held: Vec<&DemoVideo> = a.iter().filter(|v| v.split == Split::Heldout).collect();
        assert_eq!(held.len(), DEMO_HELDOUT);
        for which in [Split::Train, Split::Heldout] {
            let vs: Vec<&DemoVideo> = a.iter().filter(|v| v.split == which).collect();
            for size in DEMO_SIZES {
                assert!(vs.iter().any(|v| (v.spec.width, v.spec.height) == size));
            }
            for fps in [(24, 1), (25, 1), (30, 1), (30000, 1001)] {
                assert!(vs.iter().any(|v| v.spec.fps == fps), "{which:?} {fps:?}");
            }
        }
        let mut ids: Vec<&str> = a.iter().map(|v| v.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), DEMO_VIDEOS);
        for v in &a {
            v.spec.validate().unwrap();
            let d = v.spec.duration_s();
            assert!((3.9..=10.1).contains(&d), "{} lasts {d}", v.id);
            let n = v.spec.scenes.len();
            assert!((2..=4).contains(&n));
            assert_eq!(v.spec.scenes[0].start_s, 0.0);
            for pair in v.spec.scenes.windows(2) {
                assert_eq!(pair[0].end_s, pair[1].start_s);
                assert!(pair[0].end_s - pair[0].start_s >= 0.8);
                assert_ne!(pair[0].shape, pair[1].shape);
                assert_ne!(pair[0].colour, pair[1].colour);
                assert_ne!(pair[0].motion, pair[1].motion);
            }
            // Every frame falls in a scene.
            let last = v.spec.frame_time_s(v.spec.num_frames - 1);
            assert!(v.spec.scene_at(last).is_some(), "{}", v.id);
        }
    }

    #[test]
    fn demo_layout_is_written_once_and_reproducibly() {
        let tiny = |id: &str, split: Split, fps: (i32, i32)| DemoVideo {
            id: id.to_string(),
            split,
            spec: tiny_spec(fps, 0.6),
        };
        let videos = vec![tiny("t0", Split::Train, (25, 1)), tiny("h0", Split::Heldout, (30000, 1001))];
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let m = write_set(root, 11, &videos).unwrap();
        assert_eq!(m.videos.len(), 2);
        for rel in [
            "train/videos/t0.mp4",
            "train/narration/t0.vtt",
            "heldout/videos/h0.mp4",
            "heldout/narration/h0.vtt",
            "heldout/grounding.txt",
            "manifest.json",
        ] {
            assert!(root.join(rel).is_file(), "{rel}");
        }
        let grounding = fs::read_to_string(root.join("heldout/grounding.txt")).unwrap();
        assert_eq!(
            grounding,
            "h0 0.00 0.30##a red circle moves to the right.\n\
             h0 0.30 0.60##a blue square moves down.\n"
        );
        let json = fs::read_to_string(root.join("manifest.json")).unwrap();
        assert!(json.contains("\"fps\": [30000, 1001]") && json.contains("\"split\": \"heldout\""));
        assert!(json.contains("\"start_s\": 0.0, \"end_s\": 0.3, \"shape\": \"circle\""));

        // A second run with the same inputs touches nothing.
        let video = root.join("train/videos/t0.mp4");
        let before = fs::metadata(&video).unwrap().modified().unwrap();
        let bytes = fs::read(&video).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(write_set(root, 11, &videos).unwrap(), m);
        assert_eq!(fs::metadata(&video).unwrap().modified().unwrap(), before);

        // A missing file makes it regenerate, with the same bytes.
        fs::remove_file(&video).unwrap();
        write_set(root, 11, &videos).unwrap();
        assert_eq!(fs::read(&video).unwrap(), bytes);
    }

    #[test]
    fn json_helpers_escape_and_mark_floats() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_f64(7.0), "7.0");
        assert_eq!(json_f64(2.3), "2.3");
        assert_eq!(vtt_timestamp(0.0005), "00:00:00.001");
        assert_eq!(vtt_timestamp(59.9996), "00:01:00.000");
    }
}
