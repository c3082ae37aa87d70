//! Decode + preprocess (FFmpeg decode, libavfilter scale and crop to
//! 112x112 RGB) and clip sampling, on a small generated H.264 video.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use locvtp_media::decode::{decode_video, probe, DecodeOptions};
use locvtp_media::sampling::{segment_frame_indices, DenseClipper, Tail};
use locvtp_media::synth::{write_video, Background, Colour, Motion, Scene, Shape, SynthSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

const CLIP: usize = 16;
const FRAME_BYTES: usize = 112 * 112 * 3;

fn scenes(seconds: f64) -> Vec<Scene> {
    let motions = [Motion::Right, Motion::Grow, Motion::Down, Motion::Left];
    let n = motions.len();
    motions
        .iter()
        .enumerate()
        .map(|(i, &motion)| Scene {
            start_s: seconds * i as f64 / n as f64,
            end_s: seconds * (i + 1) as f64 / n as f64,
            shape: Shape::ALL[i % Shape::ALL.len()],
            colour: Colour::Red,
            motion,
            background: Background::Grey,
        })
        .collect()
}

/// Decodes the whole video, handing every frame to `per_frame`.
fn decode_all(path: &Path, mut per_frame: impl FnMut(&[u8])) -> u64 {
    let opts = DecodeOptions { codec_threads: 1, ..DecodeOptions::default() };
    let summary = decode_video(path, &opts, |chunk| {
        for i in 0..chunk.len() {
            per_frame(chunk.frame(i));
        }
        ControlFlow::Continue(())
    })
    .expect("the generated video decodes");
    summary.frames
}

fn bench_decode(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    // 640x272 is the shape of the reference measurements (a 2.35:1
    // film frame); 3 s at 25 fps is 75 frames, 5 dense clips.
    let path = dir.path().join("v640x272.mp4");
    let spec = SynthSpec::new(640, 272, (25, 1), 3.0, scenes(3.0));
    let frames = write_video(&spec, &path).expect("write the test video");

    let mut g = c.benchmark_group("decode");
    // One sample is a whole decode pass (tens of ms): a fixed count per
    // sample keeps the run short.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(1));
    g.bench_function("probe_640x272", |b| b.iter(|| black_box(probe(&path).unwrap())));
    g.throughput(Throughput::Elements(frames));
    g.bench_function("decode_scale_crop_640x272_75f", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let n = decode_all(&path, |f| sum += f[f.len() / 2] as u64);
            black_box((n, sum))
        })
    });
    g.bench_function("decode_scale_crop_dense_clips_640x272_75f", |b| {
        b.iter(|| {
            let mut clipper = DenseClipper::new(CLIP, CLIP, Tail::Pad, FRAME_BYTES);
            let mut clips = 0usize;
            decode_all(&path, |f| clips += clipper.push(f).len());
            clips += clipper.finish().len();
            black_box(clips)
        })
    });
    g.finish();
}

fn bench_sampling(c: &mut Criterion) {
    // Distinct frame contents so that nothing is shared between buffers.
    let frames: Vec<Vec<u8>> =
        (0..160u32).map(|i| (0..FRAME_BYTES as u32).map(|j| (i * 31 + j) as u8).collect()).collect();
    let mut g = c.benchmark_group("sampling");
    g.throughput(Throughput::Elements(frames.len() as u64));
    for (name, stride) in [("dense_clipper_160f_stride16", 16), ("dense_clipper_160f_stride8", 8)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || DenseClipper::new(CLIP, stride, Tail::Pad, FRAME_BYTES),
                |mut clipper| {
                    let mut bytes = 0usize;
                    for f in &frames {
                        for clip in clipper.push(f) {
                            bytes += clip.pixels.len();
                        }
                    }
                    for clip in clipper.finish() {
                        bytes += clip.pixels.len();
                    }
                    black_box(bytes)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("tsn_segment_indices_t10_f16", |b| {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        b.iter(|| black_box(segment_frame_indices(120, 480, 10, 16, &mut rng)))
    });
    g.finish();
}

fn config() -> Criterion {
    locvtp_benches::quick(Duration::from_millis(500), Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decode, bench_sampling
}
criterion_main!(benches);
