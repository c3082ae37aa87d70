//! The model on the CPU: C3D extraction forward (u8 clips in, projected
//! features out), the six losses forward + backward on embeddings, and a
//! whole training step (forward_losses, backward, Adam). Widths are the
//! repository's tiny and small configs so that the set runs in seconds on
//! two cores; the released widths are measured by `gpu-bench`. One
//! exception: Adam's step at the released size, from one gradient buffer
//! and from the gradient exchange's chunks read in place.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use locvtp_model::loss::{locvtp_losses, Draws, LossInputs, LossWeights};
use locvtp_model::text::TextBatch;
use locvtp_model::train::{forward_losses, zero_gradients, Adam};
use locvtp_model::{normalise_u8_clips, C3dConfig, LocVtp, ModelConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn tiny() -> ModelConfig {
    ModelConfig {
        c3d: C3dConfig { channels: [2, 4, 4, 8, 8], fc_dim: 32, num_classes: 487, ..C3dConfig::default() },
        projection_dim: 16,
        text_dim: 384,
        num_segments: 3,
        ..ModelConfig::default()
    }
}

fn small() -> ModelConfig {
    ModelConfig {
        c3d: C3dConfig { channels: [8, 16, 32, 64, 64], fc_dim: 256, num_classes: 487, ..C3dConfig::default() },
        projection_dim: 64,
        text_dim: 384,
        num_segments: 4,
        ..ModelConfig::default()
    }
}

/// Random u8 frames `[dims..., 3]`, as the decoder delivers them.
fn u8_frames(dims: &[i64]) -> Tensor {
    Tensor::randint(256, dims, (Kind::Uint8, Device::Cpu))
}

fn text_batch(b: i64, n: i64, h: i64) -> TextBatch {
    // Caption lengths vary, so that padding is exercised as in real batches.
    let word_lens: Vec<i64> = (0..b).map(|i| n - (i % 3)).collect();
    let mask: Vec<bool> = word_lens.iter().flat_map(|&l| (0..n).map(move |j| j < l)).collect();
    let word_mask = Tensor::from_slice(&mask).reshape([b, n]);
    TextBatch {
        sentence: Tensor::randn([b, h], (Kind::Float, Device::Cpu)),
        words: Tensor::randn([b, n, h], (Kind::Float, Device::Cpu)) * word_mask.unsqueeze(-1),
        word_mask,
        word_lens,
    }
}

fn bench_encode(c: &mut Criterion) {
    tch::manual_seed(0);
    let mut g = c.benchmark_group("encode_forward_cpu");
    g.sampling_mode(SamplingMode::Flat);
    for (name, cfg, batch) in [("tiny_b8", tiny(), 8i64), ("small_b4", small(), 4)] {
        let model = LocVtp::new(&cfg, Device::Cpu, 0);
        let clips = u8_frames(&[batch, 16, 112, 112, 3]);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                tch::no_grad(|| {
                    let (_, projected) = model.encode_clips(&normalise_u8_clips(&clips), false);
                    black_box(projected.double_value(&[0, 0]))
                })
            })
        });
    }
    g.finish();
}

fn bench_losses(c: &mut Criterion) {
    tch::manual_seed(0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut g = c.benchmark_group("losses_cpu");
    g.sampling_mode(SamplingMode::Flat);
    // The released shapes of one worker's share of a batch: B = 32 samples,
    // T = 10 segments, D = 256, captions of up to 24 words.
    let (b, t, n, d) = (32i64, 10i64, 24i64, 256i64);
    let cfg = ModelConfig::default();
    let model = LocVtp::new(&cfg, Device::Cpu, 0);
    let text = text_batch(b, n, d);
    let draws = Draws::sample(b, t, &text.word_lens, &mut rng);
    let leaf = |dims: &[i64]| Tensor::randn(dims, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let (v, s, w, vs) = (leaf(&[b, t, d]), leaf(&[b, d]), leaf(&[b, n, d]), leaf(&[b, t, d]));
    let weights = LossWeights::default();
    g.throughput(Throughput::Elements(b as u64));
    g.bench_function("six_terms_fwd_bwd_b32_t10_n24_d256", |bn| {
        bn.iter(|| {
            let inputs = LossInputs { v: &v, s: &s, w: &w, word_mask: &text.word_mask, v_spliced: &vs };
            let terms = locvtp_losses((&model.splice, &model.context), &inputs, &draws, &weights);
            terms.total.backward();
            black_box(v.grad().double_value(&[0, 0, 0]))
        })
    });
    g.finish();
}

fn bench_train_step(c: &mut Criterion) {
    tch::manual_seed(0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut g = c.benchmark_group("train_step_cpu");
    g.sampling_mode(SamplingMode::Flat);
    for (name, cfg, b) in [("tiny_b4", tiny(), 4i64), ("small_b2", small(), 2)] {
        let t = cfg.num_segments;
        let model = LocVtp::new(&cfg, Device::Cpu, 0);
        let mut adam = Adam::new(&model);
        let clips = u8_frames(&[b, t, 16, 112, 112, 3]);
        let text = text_batch(b, 12, cfg.text_dim);
        let draws = Draws::sample(b, t, &text.word_lens, &mut rng);
        let weights = LossWeights::default();
        g.throughput(Throughput::Elements(b as u64));
        g.bench_function(name, |bn| {
            bn.iter(|| {
                zero_gradients(&model);
                let terms = forward_losses(&model, &clips, &text, &draws, &weights);
                terms.total.backward();
                adam.step(&model, 1e-3);
                black_box(terms.total.double_value(&[]))
            })
        });
    }
    g.finish();
}

/// The optimiser step of data-parallel training at the released size
/// (62.6 million trained floats): over one gradient tensor, and over the
/// exchange's chunks where they arrived (what a CPU replica does).
fn bench_adam_released(c: &mut Criterion) {
    use locvtp_operators::train::exchange::{chunk_range, chunks};
    tch::manual_seed(0);
    let model = LocVtp::new(&ModelConfig { num_segments: 5, ..ModelConfig::default() }, Device::Cpu, 0);
    let mut adam = Adam::new(&model);
    let total = adam.layout().total;
    let grad = Tensor::randn([total as i64], (Kind::Float, Device::Cpu)) * 1e-3;
    let mut values = vec![0f32; total];
    grad.copy_data(&mut values, total);
    let pieces: Vec<&[f32]> = (0..chunks(total)).map(|c| &values[chunk_range(total, c)]).collect();
    let mut g = c.benchmark_group("adam_step_released_cpu");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    g.throughput(Throughput::Elements(total as u64));
    g.bench_function("one_buffer", |bn| bn.iter(|| adam.step_flat(&grad, 1e-4)));
    g.bench_function("exchange_chunks", |bn| bn.iter(|| adam.step_pieces(&pieces, 1e-4)));
    g.finish();
}

fn config() -> Criterion {
    locvtp_benches::quick(Duration::from_millis(500), Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_encode, bench_losses, bench_train_step, bench_adam_released
}
criterion_main!(benches);
