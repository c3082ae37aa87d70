//! One sequential FFmpeg pass over a video: demux, decode, then resize the
//! short side to `frame_size` (bilinear) and centre-crop to a square inside
//! libavfilter (scale + crop run on FFmpeg's optimised paths, never at full
//! resolution in Rust loops). Frames leave as packed RGB24 u8.

use anyhow::{anyhow, bail, Context, Result};
use ffmpeg::format::Pixel;
use ffmpeg::util::frame::video::Video as VideoFrame;
use ffmpeg_next as ffmpeg;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Once;

/// Frame rate assumed for frames that carry no timestamp in a stream that
/// declares no rate (FFmpeg's own default for raw streams).
const FALLBACK_FPS: f64 = 25.0;

/// Consecutive demuxer errors after which a pass gives up on the rest of
/// the file.
const MAX_FAILED_READS: u32 = 1000;

/// How frames are decoded and shaped.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct DecodeOptions {
    /// Side of the square output frames (112 for C3D).
    pub frame_size: u32,
    /// FFmpeg's own decoding threads for this video (0 = FFmpeg decides).
    pub codec_threads: usize,
    /// Frames per [`FrameChunk`] handed to the caller.
    pub chunk_frames: usize,
    /// Which decoder turns packets into frames. Left out of the serialised
    /// options when it is the CPU's, so that a training run's manifest (its
    /// settings, compared on resume) reads as it did before the option
    /// existed.
    #[serde(skip_serializing_if = "DecoderKind::is_cpu")]
    pub decoder: DecoderKind,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { frame_size: 112, codec_threads: 1, chunk_frames: 16, decoder: DecoderKind::Cpu }
    }
}

/// Which decoder turns packets into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// FFmpeg's software decoders.
    #[default]
    Cpu,
    /// The GPU's video decoder (NVDEC) through FFmpeg's cuvid decoders,
    /// where this FFmpeg has one for the video's codec and the NVIDIA
    /// driver's libraries load; the CPU's otherwise, said once per process
    /// and reason. The frames then pass through the same crop and resize.
    Nvdec,
}

impl DecoderKind {
    fn is_cpu(&self) -> bool {
        *self == DecoderKind::Cpu
    }
}

/// FFmpeg's cuvid decoder for a software decoder's codec.
fn cuvid_name(codec: &str) -> Option<&'static str> {
    Some(match codec {
        "h264" => "h264_cuvid",
        "hevc" => "hevc_cuvid",
        "vp8" => "vp8_cuvid",
        "vp9" => "vp9_cuvid",
        "av1" => "av1_cuvid",
        "mpeg4" => "mpeg4_cuvid",
        "mpeg2video" => "mpeg2_cuvid",
        "mpeg1video" => "mpeg1_cuvid",
        "mjpeg" => "mjpeg_cuvid",
        "vc1" => "vc1_cuvid",
        _ => return None,
    })
}

/// Says why a video is decoded on the CPU after all: once per process and
/// reason (a missing driver would otherwise be repeated for every video).
fn warn_cpu_fallback(reason: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&reason) {
        tracing::warn!("NVDEC decoding unavailable ({reason}): decoding on the CPU");
        said.push(reason);
    }
}

/// Why the driver failed to start NVDEC, once it has: no later video tries
/// again.
static NVDEC_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Opens the GPU decoder for `codec`, or says why not.
fn open_nvdec(params: ffmpeg::codec::Parameters, codec: &str) -> std::result::Result<ffmpeg::decoder::Video, String> {
    let name = cuvid_name(codec).ok_or_else(|| format!("no NVDEC decoder for {codec}"))?;
    let cuvid = ffmpeg::decoder::find_by_name(name).ok_or_else(|| format!("this FFmpeg was built without {name}"))?;
    if let Some(failure) = NVDEC_FAILURE.get() {
        return Err(failure.clone());
    }
    let ctx = ffmpeg::codec::context::Context::from_parameters(params).map_err(|e| e.to_string())?;
    ctx.decoder().open_as(cuvid).and_then(|o| o.video()).map_err(|e| {
        NVDEC_FAILURE.get_or_init(|| format!("{name} did not start: no usable NVIDIA driver or GPU ({e})")).clone()
    })
}

/// What the container says about a video, before decoding it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Average frame rate from the stream (frames / second).
    pub fps: f64,
    /// Duration in seconds (stream duration, else container duration).
    pub duration_s: f64,
    /// Frame count the container declares; 0 when unknown.
    pub declared_frames: u64,
    pub codec: String,
    /// Display rotation in degrees (counter-clockwise), from side data.
    pub rotation: i32,
}

/// Consecutive decoded frames of one video, packed `[n, size, size, 3]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameChunk {
    /// Index of the first frame of the chunk in decode order.
    pub first_index: u64,
    pub frame_size: u32,
    pub pixels: Vec<u8>,
    /// Presentation time of each frame in seconds, from the stream's
    /// timestamps (not from an assumed frame rate).
    pub times_s: Vec<f64>,
}

impl FrameChunk {
    pub fn len(&self) -> usize {
        self.times_s.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times_s.is_empty()
    }

    pub fn frame_bytes(&self) -> usize {
        (self.frame_size * self.frame_size * 3) as usize
    }

    /// Pixels of the `i`-th frame of the chunk.
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.frame_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// The result of a whole pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecodeSummary {
    pub info: VideoInfo,
    pub frames: u64,
    /// Packets the demuxer could not read or the decoder rejected (damaged
    /// or truncated data); the pass went on without them.
    pub corrupt_packets: u64,
    /// True when the caller stopped the pass early.
    pub stopped: bool,
    /// True when the GPU's decoder decoded the video.
    pub nvdec: bool,
}

/// Initialises FFmpeg once per process and quiets its own logging.
pub fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ffmpeg::init();
        // FFmpeg's own warnings about damaged input would interleave with
        // our per-item errors; we report those ourselves.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
}

fn rational(r: ffmpeg::Rational) -> f64 {
    if r.denominator() == 0 {
        0.0
    } else {
        r.numerator() as f64 / r.denominator() as f64
    }
}

fn display_rotation(stream: &ffmpeg::format::stream::Stream) -> i32 {
    for sd in stream.side_data() {
        if sd.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
            let angle = unsafe { ffmpeg::ffi::av_display_rotation_get(sd.data().as_ptr() as *const i32) };
            if angle.is_finite() {
                return (angle.round() as i32).rem_euclid(360);
            }
        }
    }
    0
}

fn open(path: &Path) -> Result<ffmpeg::format::context::Input> {
    init_ffmpeg();
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.len() == 0 {
        bail!("{}: empty file (0 bytes)", path.display());
    }
    ffmpeg::format::input(&path).map_err(|e| {
        let hint = if looks_like_mp4(path) {
            " (an MP4 without its index, the moov box: a truncated or unfinished file)"
        } else {
            ""
        };
        anyhow!("{}: not a readable media file: {e}{hint}", path.display())
    })
}

/// Whether the file starts like an ISO media file (an `ftyp` box). When
/// FFmpeg cannot open such a file, the usual cause is a cut-off download
/// whose index was to be written at the end.
fn looks_like_mp4(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[4..8] == b"ftyp"
}

/// The stream to decode: FFmpeg's best video stream, unless that is an
/// attached picture (the cover art of an audio file), which is a single
/// still image and not a video.
fn video_stream<'a>(
    ictx: &'a ffmpeg::format::context::Input,
    path: &Path,
) -> Result<ffmpeg::format::stream::Stream<'a>> {
    use ffmpeg::format::stream::Disposition;
    let is_video = |s: &ffmpeg::format::stream::Stream| {
        s.parameters().medium() == ffmpeg::media::Type::Video && !s.disposition().contains(Disposition::ATTACHED_PIC)
    };
    if let Some(best) = ictx.streams().best(ffmpeg::media::Type::Video).filter(|s| is_video(s)) {
        return Ok(best);
    }
    if let Some(other) = ictx.streams().find(|s| is_video(s)) {
        return Ok(other);
    }
    let has_picture = ictx.streams().any(|s| s.parameters().medium() == ffmpeg::media::Type::Video);
    if has_picture {
        bail!("{}: no video stream (only an attached cover picture)", path.display());
    }
    bail!("{}: no video stream", path.display())
}

fn info_of(ictx: &ffmpeg::format::context::Input, path: &Path) -> Result<(usize, VideoInfo)> {
    let stream = video_stream(ictx, path)?;
    let params = stream.parameters();
    let ctx = ffmpeg::codec::context::Context::from_parameters(params)
        .map_err(|e| anyhow!("{}: unusable video stream: {e}", path.display()))?;
    let dec = ctx.decoder().video().map_err(|e| anyhow!("{}: no decoder for the video stream: {e}", path.display()))?;
    let tb = rational(stream.time_base());
    let stream_duration = if stream.duration() > 0 { stream.duration() as f64 * tb } else { 0.0 };
    let container_duration =
        if ictx.duration() > 0 { ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE) } else { 0.0 };
    let mut fps = rational(stream.avg_frame_rate());
    if fps <= 0.0 {
        fps = rational(stream.rate());
    }
    let info = VideoInfo {
        width: dec.width(),
        height: dec.height(),
        fps,
        duration_s: if stream_duration > 0.0 { stream_duration } else { container_duration },
        declared_frames: stream.frames().max(0) as u64,
        codec: dec.codec().map(|c| c.name().to_string()).unwrap_or_default(),
        rotation: display_rotation(&stream),
    };
    if info.width == 0 || info.height == 0 {
        bail!("{}: video stream has no frame size", path.display());
    }
    Ok((stream.index(), info))
}

/// Reads the container's metadata without decoding frames.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let ictx = open(path)?;
    Ok(info_of(&ictx, path)?.1)
}

/// Why FFmpeg rules a file out as a video.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAVideo {
    /// FFmpeg cannot open the file as media (the message names the file).
    #[error("{0}")]
    NotMedia(String),
    /// A media file without a video stream: audio only, or only a cover
    /// picture.
    #[error("{0}")]
    NoVideoStream(String),
}

/// Whether FFmpeg opens `path` and finds a video stream in it, without
/// decoding a frame: what makes a file a candidate video. Whether that
/// stream then decodes is the decoder's business (and its per-item error).
pub fn check_video(path: &Path) -> std::result::Result<(), NotAVideo> {
    let ictx = open(path).map_err(|e| NotAVideo::NotMedia(format!("{e:#}")))?;
    video_stream(&ictx, path).map(|_| ()).map_err(|e| NotAVideo::NoVideoStream(format!("{e:#}")))
}

/// Filter chain: centre crop of the largest square, rotation to the display
/// orientation, bilinear resize to `size` x `size`, packed RGB.
///
/// This is "resize the short side to `size`, keeping the aspect, then crop
/// the centre" with the crop done first: swscale then reads only the square
/// that survives and writes `size` x `size` pixels, instead of resizing and
/// converting to RGB a whole `size`-high frame that is mostly cropped away
/// (a third less CPU per 640x272 frame, an eighth at 720p; the pixels agree
/// up to sub-pixel centring). A centred square is the same pixels in every
/// orientation, so the rotation moves only the square, and running it
/// before the resize keeps a rotated file's frames identical to those of an
/// upright copy.
fn filter_spec(width: u32, height: u32, rotation: i32, size: u32) -> String {
    let side = width.min(height);
    let crop = if width == height { String::new() } else { format!("crop={side}:{side},") };
    let rot = match rotation {
        90 => "transpose=cclock,",
        270 => "transpose=clock,",
        180 => "hflip,vflip,",
        _ => "",
    };
    format!("{crop}{rot}scale={size}:{size}:flags=bilinear")
}

struct Shaper {
    graph: ffmpeg::filter::Graph,
    key: (u32, u32, Pixel),
    time_base: f64,
}

impl Shaper {
    fn new(frame: &VideoFrame, time_base: ffmpeg::Rational, rotation: i32, size: u32) -> Result<Shaper> {
        let mut graph = ffmpeg::filter::Graph::new();
        // libavfilter would otherwise give swscale one slice thread per core
        // for every video: on a size x size output the hand-offs cost more
        // than they save, and the decode stage already runs one video per
        // core. Must be set before any filter is added.
        unsafe {
            (*graph.as_mut_ptr()).nb_threads = 1;
        }
        let pix: ffmpeg::ffi::AVPixelFormat = frame.format().into();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect=1/1",
            frame.width(),
            frame.height(),
            pix as i32,
            time_base.numerator(),
            time_base.denominator().max(1)
        );
        let buffer = ffmpeg::filter::find("buffer").ok_or_else(|| anyhow!("FFmpeg lacks the buffer filter"))?;
        let sink = ffmpeg::filter::find("buffersink").ok_or_else(|| anyhow!("FFmpeg lacks the buffersink filter"))?;
        graph.add(&buffer, "in", &args)?;
        graph.add(&sink, "out", "")?;
        graph.get("out").expect("sink just added").set_pixel_format(Pixel::RGB24);
        let spec = filter_spec(frame.width(), frame.height(), rotation, size);
        graph.output("in", 0)?.input("out", 0)?.parse(&spec)?;
        graph.validate().with_context(|| {
            format!("cannot convert {}x{} {:?} frames ({spec})", frame.width(), frame.height(), frame.format())
        })?;
        Ok(Shaper { graph, key: (frame.width(), frame.height(), frame.format()), time_base: rational(time_base) })
    }
}

/// Accumulates shaped frames into chunks for the caller.
struct ChunkSink<'a, F: FnMut(FrameChunk) -> ControlFlow<()>> {
    size: u32,
    chunk_frames: usize,
    next_index: u64,
    pending: FrameChunk,
    on_chunk: &'a mut F,
    stopped: bool,
}

impl<F: FnMut(FrameChunk) -> ControlFlow<()>> ChunkSink<'_, F> {
    fn push(&mut self, rgb: &VideoFrame, time_s: f64) {
        let row = (self.size * 3) as usize;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        for y in 0..self.size as usize {
            self.pending.pixels.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        self.pending.times_s.push(time_s);
        self.next_index += 1;
        if self.pending.len() >= self.chunk_frames {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() || self.stopped {
            return;
        }
        let fresh = FrameChunk {
            first_index: self.next_index,
            frame_size: self.size,
            pixels: Vec::with_capacity(self.chunk_frames * (self.size * self.size * 3) as usize),
            times_s: Vec::with_capacity(self.chunk_frames),
        };
        let chunk = std::mem::replace(&mut self.pending, fresh);
        if (self.on_chunk)(chunk).is_break() {
            self.stopped = true;
        }
    }
}

/// Decodes `path` in one sequential pass and hands the shaped frames to
/// `on_chunk` in order, `opts.chunk_frames` at a time. `on_chunk` may stop
/// the pass by returning `Break`. Damaged packets are skipped and counted;
/// a video that yields no frame at all is an error.
pub fn decode_video<F>(path: &Path, opts: &DecodeOptions, mut on_chunk: F) -> Result<DecodeSummary>
where
    F: FnMut(FrameChunk) -> ControlFlow<()>,
{
    let mut ictx = open(path)?;
    let (index, info) = info_of(&ictx, path)?;
    let (time_base, mut decoder, nvdec) = {
        let stream = ictx.stream(index).expect("index from best()");
        let gpu = match opts.decoder {
            DecoderKind::Cpu => None,
            DecoderKind::Nvdec => open_nvdec(stream.parameters(), &info.codec).map_err(warn_cpu_fallback).ok(),
        };
        let nvdec = gpu.is_some();
        let decoder = match gpu {
            Some(decoder) => decoder,
            None => {
                let mut ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
                    .map_err(|e| anyhow!("{}: unusable video stream: {e}", path.display()))?;
                ctx.set_threading(ffmpeg::codec::threading::Config {
                    kind: ffmpeg::codec::threading::Type::Frame,
                    count: opts.codec_threads,
                    ..Default::default()
                });
                ctx.decoder()
                    .video()
                    .map_err(|e| anyhow!("{}: cannot open the {} decoder: {e}", path.display(), info.codec))?
            }
        };
        (stream.time_base(), decoder, nvdec)
    };
    let size = opts.frame_size;
    let mut sink = ChunkSink {
        size,
        chunk_frames: opts.chunk_frames.max(1),
        next_index: 0,
        pending: FrameChunk { first_index: 0, frame_size: size, pixels: Vec::new(), times_s: Vec::new() },
        on_chunk: &mut on_chunk,
        stopped: false,
    };
    let mut shaper: Option<Shaper> = None;
    let mut decoded = VideoFrame::empty();
    let mut rgb = VideoFrame::empty();
    let mut corrupt_packets = 0u64;
    let mut last_time = f64::NEG_INFINITY;
    // Frames without any timestamp (raw elementary streams, some damaged
    // files) are placed one declared frame interval after the previous one.
    let frame_step = if info.fps.is_finite() && info.fps > 0.0 { 1.0 / info.fps } else { 1.0 / FALLBACK_FPS };

    let mut drain = |decoder: &mut ffmpeg::decoder::Video,
                     shaper: &mut Option<Shaper>,
                     sink: &mut ChunkSink<'_, F>|
     -> Result<()> {
        while !sink.stopped && decoder.receive_frame(&mut decoded).is_ok() {
            let key = (decoded.width(), decoded.height(), decoded.format());
            if shaper.as_ref().map(|s| s.key) != Some(key) {
                // The first frame, or a mid-stream change of size or pixel
                // format: (re)build the chain for the new input.
                *shaper = Some(
                    Shaper::new(&decoded, time_base, info.rotation, size)
                        .with_context(|| format!("{}", path.display()))?,
                );
            }
            let sh = shaper.as_mut().expect("built above");
            let ts = decoded.timestamp().or(decoded.pts());
            decoded.set_pts(ts);
            sh.graph
                .get("in")
                .expect("source")
                .source()
                .add(&decoded)
                .with_context(|| format!("{}: frame conversion failed", path.display()))?;
            loop {
                // av_buffersink_get_frame moves a new reference into the
                // frame without releasing the one it already holds: reusing
                // `rgb` would leak every shaped frame. A fresh frame drops
                // (and unreferences) the previous one.
                rgb = VideoFrame::empty();
                if sh.graph.get("out").expect("sink").sink().frame(&mut rgb).is_err() {
                    break;
                }
                let t = match rgb.pts() {
                    Some(p) => p as f64 * sh.time_base,
                    None if last_time.is_finite() => last_time + frame_step,
                    None => 0.0,
                };
                // Timestamps must not run backwards for the sampler; a
                // damaged stream that repeats one is nudged forward.
                let t = if t > last_time { t } else { last_time + 1e-6 };
                last_time = t;
                sink.push(&rgb, t);
                if sink.stopped {
                    break;
                }
            }
        }
        Ok(())
    };

    let mut failed_reads = 0u32;
    loop {
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => failed_reads = 0,
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => {
                // A truncated or damaged container: the demuxer reports the
                // sample it cannot read and moves on to the next. An error
                // that repeats without end (an I/O error) ends the pass with
                // the frames decoded so far.
                corrupt_packets += 1;
                failed_reads += 1;
                tracing::debug!("{}: unreadable packet: {e}", path.display());
                if failed_reads >= MAX_FAILED_READS {
                    break;
                }
                continue;
            }
        }
        if packet.stream() != index {
            continue;
        }
        let mut sent = decoder.send_packet(&packet);
        if matches!(sent, Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN) {
            // The decoder's output is full: take its frames, then resend.
            drain(&mut decoder, &mut shaper, &mut sink)?;
            sent = decoder.send_packet(&packet);
        }
        if let Err(e) = sent {
            corrupt_packets += 1;
            tracing::debug!("{}: packet rejected: {e}", path.display());
            continue;
        }
        drain(&mut decoder, &mut shaper, &mut sink)?;
        if sink.stopped {
            break;
        }
    }
    if !sink.stopped {
        let _ = decoder.send_eof();
        drain(&mut decoder, &mut shaper, &mut sink)?;
        sink.flush();
    }
    if sink.next_index == 0 {
        bail!("{}: no decodable video frame ({} damaged packets)", path.display(), corrupt_packets);
    }
    Ok(DecodeSummary { info, frames: sink.next_index, corrupt_packets, stopped: sink.stopped, nvdec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_keeps_aspect_and_crops_square() {
        assert_eq!(filter_spec(1280, 720, 0, 112), "crop=720:720,scale=112:112:flags=bilinear");
        assert_eq!(filter_spec(240, 320, 0, 112), "crop=240:240,scale=112:112:flags=bilinear");
        assert_eq!(filter_spec(1280, 720, 90, 112), "crop=720:720,transpose=cclock,scale=112:112:flags=bilinear");
        assert_eq!(filter_spec(97, 55, 270, 112), "crop=55:55,transpose=clock,scale=112:112:flags=bilinear");
        assert_eq!(filter_spec(97, 55, 180, 112), "crop=55:55,hflip,vflip,scale=112:112:flags=bilinear");
        assert_eq!(filter_spec(100, 100, 0, 112), "scale=112:112:flags=bilinear");
    }

    #[test]
    fn missing_and_empty_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.mp4");
        std::fs::write(&empty, b"").unwrap();
        let err = probe(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.mp4") && err.contains("0 bytes"), "{err}");
        let junk = dir.path().join("junk.mp4");
        std::fs::write(&junk, (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
        let err =
            decode_video(&junk, &DecodeOptions::default(), |_| ControlFlow::Continue(())).unwrap_err().to_string();
        assert!(err.contains("junk.mp4"), "{err}");
    }

    #[test]
    fn asking_for_nvdec_where_none_starts_decodes_the_same_frames_on_the_cpu() {
        // The machines the tests run on have no NVIDIA driver (Debian's
        // FFmpeg carries the cuvid decoders, the portable one may not):
        // every pass falls back, the second without trying again.
        use crate::synth::{Background, Colour, Motion, Scene, Shape, SynthSpec};
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("v.mp4");
        let scene = Scene {
            start_s: 0.0,
            end_s: 0.4,
            shape: Shape::Square,
            colour: Colour::Green,
            motion: Motion::Down,
            background: Background::Grey,
        };
        crate::synth::write_video(&SynthSpec::new(48, 32, (25, 1), 0.4, vec![scene]), &video).unwrap();
        let decode = |decoder| {
            let mut pixels = Vec::new();
            let opts = DecodeOptions { frame_size: 16, decoder, ..DecodeOptions::default() };
            let summary = decode_video(&video, &opts, |chunk| {
                pixels.extend_from_slice(&chunk.pixels);
                ControlFlow::Continue(())
            })
            .unwrap();
            (pixels, summary)
        };
        let (cpu, on_cpu) = decode(DecoderKind::Cpu);
        assert!(on_cpu.frames >= 9 && !on_cpu.nvdec);
        for _ in 0..2 {
            let (fallback, summary) = decode(DecoderKind::Nvdec);
            assert!(!summary.nvdec, "no NVDEC here");
            assert_eq!(summary.frames, on_cpu.frames);
            assert!(fallback == cpu, "the same frames as the CPU's decoder");
        }
    }

    #[test]
    fn the_decoder_option_is_written_only_when_it_is_not_the_cpu() {
        // A training run's manifest holds the serialised options: runs
        // from before the option existed must read the same.
        let cpu = serde_json::to_value(DecodeOptions::default()).unwrap();
        assert!(cpu.get("decoder").is_none(), "{cpu}");
        let gpu = DecodeOptions { decoder: DecoderKind::Nvdec, ..DecodeOptions::default() };
        let written = serde_json::to_value(gpu).unwrap();
        assert_eq!(written["decoder"], "nvdec");
        assert_eq!(serde_json::from_value::<DecodeOptions>(written).unwrap(), gpu);
        assert!(serde_json::from_value::<DecodeOptions>(serde_json::json!({ "decoder": "gpu" })).is_err());
    }

    #[test]
    fn check_video_tells_a_video_from_what_ffmpeg_cannot_open() {
        use crate::synth::{Background, Colour, Motion, Scene, Shape, SynthSpec};
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("v.unknown");
        let scene = Scene {
            start_s: 0.0,
            end_s: 0.2,
            shape: Shape::Circle,
            colour: Colour::Red,
            motion: Motion::Right,
            background: Background::Navy,
        };
        crate::synth::write_video(&SynthSpec::new(32, 32, (25, 1), 0.2, vec![scene]), &video).unwrap();
        assert_eq!(check_video(&video), Ok(()), "found by content, whatever the extension");
        let junk = dir.path().join("junk.dat");
        std::fs::write(&junk, (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
        match check_video(&junk) {
            Err(NotAVideo::NotMedia(m)) => assert!(m.contains("junk.dat"), "{m}"),
            other => panic!("junk: {other:?}"),
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(check_video(&empty), Err(NotAVideo::NotMedia(_))));
    }
}
