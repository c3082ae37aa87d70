//! Feature output: the crash-safe spool (zstd + CRC, fsync per video) and
//! the final HDF5 assembly, for 50 videos of 64 clips x 256 features (the
//! projected layer of the released model).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use locvtp_store::{write_hdf5, RunAttrs, Spool, SpoolRecord};
use std::hint::black_box;
use std::time::Duration;

fn records(videos: u32, clips: u32, dim: u32) -> Vec<SpoolRecord> {
    (0..videos)
        .map(|v| SpoolRecord {
            video_id: format!("vid{v:05}"),
            num_clips: clips,
            dim,
            fps: 29.97,
            frames: clips as u64 * 16,
            // Values with a spread like real features, so that zstd does not
            // get an unrealistically easy input.
            features: (0..clips * dim).map(|i| ((i.wrapping_mul(2654435761) >> 8) as f32 / 1e7).sin()).collect(),
        })
        .collect()
}

fn bench_store(c: &mut Criterion) {
    let recs = records(50, 64, 256);
    let bytes: u64 = recs.iter().map(|r| r.features.len() as u64 * 4).sum();
    let run = RunAttrs {
        checkpoint: "bench".into(),
        layer: "projection".into(),
        clip_frames: 16,
        stride: 16,
        ..RunAttrs::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("store");
    // Each spool append waits for fsync: few, equal-sized samples.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("hdf5_write_50videos_64x256", |b| {
        let path = dir.path().join("features.h5");
        b.iter(|| {
            write_hdf5(&path, "c3d_features", &run, &recs).expect("write HDF5");
            black_box(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
        })
    });
    g.bench_function("spool_append_50videos_64x256", |b| {
        b.iter_batched(
            || {
                let path = dir.path().join("features.spool");
                let _ = std::fs::remove_file(&path);
                Spool::open(&path, &run).expect("open spool").0
            },
            |mut spool| {
                for r in &recs {
                    spool.append(r).expect("append");
                }
                black_box(spool)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    locvtp_benches::quick(Duration::from_millis(300), Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_store
}
criterion_main!(benches);
