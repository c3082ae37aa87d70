//! Encoding rendered frames to MP4 with FFmpeg, deterministically.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use ffmpeg::{codec, encoder, format, frame, software, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use serde::{Deserialize, Serialize};

use super::render::SynthSpec;

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

pub(super) fn partial_path(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::test_support::{pixel, tiny_spec};
    use crate::synth::{Background, Colour};

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
}
