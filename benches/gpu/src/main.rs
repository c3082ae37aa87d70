//! `gpu-bench`: C3D feature extraction and LocVTP training steps on
//! synthetic u8 clips, through the project's own model code (tch), in fp32
//! and with bf16 autocast. It links libtorch and nothing else native, so it
//! runs on a GPU machine that only has a PyTorch install:
//!
//! ```text
//! LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib \
//!     ./gpu-bench --device cuda --model full
//! ./gpu-bench --device cpu --model tiny --iters 2 --warmup 1    # plumbing check without a GPU
//! ```
//!
//! Each measurement is one JSON line on stdout (the same fields as
//! `torch_reference.py` prints); progress and a table go to stderr.

use locvtp_model::amp;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use locvtp_model::device::Device as DeviceChoice;
use locvtp_model::loss::{Draws, LossWeights};
use locvtp_model::text::TextBatch;
use locvtp_model::train::{forward_losses, zero_gradients, Adam};
use locvtp_model::{normalise_u8_clips, C3dConfig, LocVtp, ModelConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelSize {
    /// configs/c3d-tiny.toml: every layer, minimal widths.
    Tiny,
    /// configs/c3d-small.toml: 1/8 of the released channels.
    Small,
    /// configs/c3d-full.toml: the released LocVTP model.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    Extract,
    Train,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Precision {
    Fp32,
    Bf16,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// The float input keeps the decoder's channels-last order (what the
    /// pipeline feeds the encoder: a permuted view of `[N, F, H, W, 3]`).
    ChannelsLast,
    /// The input is made contiguous `[N, 3, F, H, W]` first.
    Contiguous,
}

#[derive(Debug, Parser)]
#[command(
    name = "gpu-bench",
    about = "C3D extraction and LocVTP training throughput on synthetic clips (libtorch only)"
)]
struct Args {
    /// cuda, cuda:N or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, value_enum, default_value = "full")]
    model: ModelSize,
    #[arg(long, value_enum, default_value = "all")]
    task: Task,
    #[arg(long, value_enum, default_value = "both")]
    precision: Precision,
    /// Clips per extraction batch.
    #[arg(long, default_value_t = 32)]
    extract_batch: i64,
    /// Samples per training batch (each of T segments of 16 frames).
    #[arg(long, default_value_t = 8)]
    train_batch: i64,
    /// Words per caption in the synthetic text features.
    #[arg(long, default_value_t = 20)]
    words: i64,
    /// Untimed iterations first (cuDNN autotuning, allocator warm-up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Memory layout of the extraction input.
    #[arg(long, value_enum, default_value = "channels-last")]
    layout: Layout,
    /// Keep clips on the device between iterations instead of copying u8
    /// clips from host memory every batch as the pipeline does.
    #[arg(long)]
    resident_input: bool,
    /// Turn off cuDNN's autotuner (on by default: shapes never change).
    #[arg(long)]
    no_cudnn_benchmark: bool,
    /// After the timed training loop, this many more steps with the device
    /// synchronised between forward, backward and optimiser, to show where a
    /// step's time goes (0: none).
    #[arg(long, default_value_t = 0)]
    phase_iters: usize,
    /// Seed of the weights and the synthetic inputs.
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

fn model_config(size: ModelSize) -> ModelConfig {
    // The same values as configs/c3d-*.toml, compiled in so that the binary
    // needs no files on the GPU machine.
    let (channels, fc_dim, projection_dim, text_dim, num_segments) = match size {
        ModelSize::Tiny => ([2, 4, 4, 8, 8], 32, 16, 384, 3),
        ModelSize::Small => ([8, 16, 32, 64, 64], 256, 64, 384, 4),
        ModelSize::Full => ([64, 128, 256, 512, 512], 4096, 256, 768, 10),
    };
    ModelConfig {
        c3d: C3dConfig { channels, fc_dim, num_classes: 487, ..C3dConfig::default() },
        projection_dim,
        text_dim,
        num_segments,
        ..ModelConfig::default()
    }
}

/// The name clap accepts for an option value.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Frozen-text-encoder output for `b` captions of up to `n` words.
fn text_batch(b: i64, n: i64, h: i64, device: Device) -> TextBatch {
    // Lengths vary so that the padding masks do real work.
    let word_lens: Vec<i64> = (0..b).map(|i| (n - i % 4).max(1)).collect();
    let mask: Vec<bool> = word_lens.iter().flat_map(|&l| (0..n).map(move |j| j < l)).collect();
    let word_mask = Tensor::from_slice(&mask).reshape([b, n]).to_device(device);
    TextBatch {
        sentence: Tensor::randn([b, h], (Kind::Float, device)),
        words: Tensor::randn([b, n, h], (Kind::Float, device)) * word_mask.unsqueeze(-1),
        word_mask,
        word_lens,
    }
}

struct Timing {
    warmup_s: f64,
    seconds: f64,
}

/// Runs `step` `warmup` times untimed, then `iters` times timed, with the
/// device synchronised at both edges of the timed span.
fn time_loop(device: Device, warmup: usize, iters: usize, mut step: impl FnMut()) -> Timing {
    let w = Instant::now();
    for _ in 0..warmup {
        step();
    }
    synchronize(device);
    let warmup_s = w.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..iters {
        step();
    }
    synchronize(device);
    Timing { warmup_s, seconds: t.elapsed().as_secs_f64() }
}

fn parameter_count(model: &LocVtp) -> i64 {
    model.vs.trainable_variables().iter().map(|v| v.numel() as i64).sum()
}

struct Bench<'a> {
    args: &'a Args,
    device: Device,
    cfg: ModelConfig,
    model: LocVtp,
}

impl Bench<'_> {
    fn record(&self, task: &str, bf16: bool, batch: i64, unit: &str, per_iter: i64, t: &Timing) -> serde_json::Value {
        let iters = self.args.iters as f64;
        json!({
            "impl": "rust-tch",
            "task": task,
            "precision": if bf16 { "bf16-autocast" } else { "fp32" },
            "model": value_name(self.args.model),
            "device": format!("{:?}", self.device),
            "batch": batch,
            "segments": if task == "train" { self.cfg.num_segments } else { 1 },
            "frames": self.cfg.frames_per_segment,
            "layout": if task == "extract" { value_name(self.args.layout) } else { "channels-last".into() },
            "input": if self.args.resident_input { "device" } else { "host-u8" },
            "warmup_iters": self.args.warmup,
            "iters": self.args.iters,
            "warmup_s": t.warmup_s,
            "seconds": t.seconds,
            "ms_per_iter": 1e3 * t.seconds / iters,
            "unit": unit,
            "per_s": per_iter as f64 * iters / t.seconds,
            "params": parameter_count(&self.model),
        })
    }

    fn extract(&self, bf16: bool) -> Result<serde_json::Value> {
        let a = self.args;
        let (b, f, s) = (a.extract_batch, self.cfg.frames_per_segment, self.cfg.frame_size);
        let host = Tensor::randint(256, [b, f, s, s, 3], (Kind::Uint8, Device::Cpu));
        let resident = host.to_device(self.device);
        let mut out_len = 0;
        let t = time_loop(self.device, a.warmup, a.iters, || {
            let feats = tch::no_grad(|| {
                amp::bf16(self.device, bf16, || {
                    let u8s = if a.resident_input { resident.shallow_clone() } else { host.to_device(self.device) };
                    let mut x = normalise_u8_clips(&u8s);
                    if a.layout == Layout::Contiguous {
                        x = x.contiguous();
                    }
                    let (_, projected) = self.model.encode_clips(&x, false);
                    // Features leave the device every batch, as in the
                    // pipeline's encoder (this also synchronises).
                    projected.to_kind(Kind::Float).to_device(Device::Cpu)
                })
            });
            out_len = feats.numel();
        });
        if out_len != (b * self.cfg.projection_dim) as usize {
            bail!("extraction produced {out_len} values");
        }
        Ok(self.record("extract", bf16, b, "clips", b, &t))
    }

    fn train(&self, bf16: bool) -> Result<serde_json::Value> {
        let a = self.args;
        let (b, tt, f, s) = (a.train_batch, self.cfg.num_segments, self.cfg.frames_per_segment, self.cfg.frame_size);
        let host = Tensor::randint(256, [b, tt, f, s, s, 3], (Kind::Uint8, Device::Cpu));
        let clips = if a.resident_input { host.to_device(self.device) } else { host };
        let text = text_batch(b, a.words, self.cfg.text_dim, self.device);
        let mut rng = ChaCha8Rng::seed_from_u64(a.seed as u64);
        // One set of draws for the whole run: drawing is host work that the
        // reference script leaves out as well.
        let draws = Draws::sample(b, tt, &text.word_lens, &mut rng);
        let weights = LossWeights::default();
        let mut adam = Adam::new(&self.model);
        let mut last = Tensor::zeros([], (Kind::Float, self.device));
        let t = time_loop(self.device, a.warmup, a.iters, || {
            zero_gradients(&self.model);
            let terms = amp::bf16(self.device, bf16, || forward_losses(&self.model, &clips, &text, &draws, &weights));
            terms.total.backward();
            adam.step(&self.model, 1e-3);
            last = terms.total.detach();
        });
        let loss = last.double_value(&[]);
        if !loss.is_finite() {
            // Random data at the released learning rate can diverge (oneDNN's
            // bf16 convolutions on CPUs without bf16 units do within a few
            // steps); a throughput figure is still a throughput figure.
            eprintln!("warning: the training loss is {loss} after {} steps", a.warmup + a.iters);
        }
        let mut rec = self.record("train", bf16, b, "samples", b, &t);
        rec["clips_per_s"] = json!((b * tt) as f64 * a.iters as f64 / t.seconds);
        if a.phase_iters > 0 {
            let mut ms = [0f64; 3];
            for _ in 0..a.phase_iters {
                synchronize(self.device);
                let t0 = Instant::now();
                zero_gradients(&self.model);
                let terms =
                    amp::bf16(self.device, bf16, || forward_losses(&self.model, &clips, &text, &draws, &weights));
                synchronize(self.device);
                let t1 = Instant::now();
                terms.total.backward();
                synchronize(self.device);
                let t2 = Instant::now();
                adam.step(&self.model, 1e-3);
                synchronize(self.device);
                for (acc, d) in ms.iter_mut().zip([t1 - t0, t2 - t1, t2.elapsed()]) {
                    *acc += 1e3 * d.as_secs_f64() / a.phase_iters as f64;
                }
            }
            rec["phases_ms"] = json!({ "forward": ms[0], "backward": ms[1], "optimizer": ms[2] });
        }
        rec["last_loss"] = if loss.is_finite() { json!(loss) } else { serde_json::Value::Null };
        Ok(rec)
    }
}

fn run(args: &Args) -> Result<Vec<serde_json::Value>> {
    let choice = DeviceChoice::try_from(args.device.clone()).map_err(anyhow::Error::msg)?;
    choice.check_available()?;
    let device = choice.for_worker(0);
    if let Device::Cuda(i) = device {
        amp::load_torch_cuda()?;
        let n = tch::Cuda::device_count();
        if (i as i64) >= n {
            bail!("{device:?} requested but libtorch sees {n} CUDA device(s)");
        }
        tch::Cuda::cudnn_set_benchmark(!args.no_cudnn_benchmark);
    }
    let precisions: &[bool] = match args.precision {
        Precision::Fp32 => &[false],
        Precision::Bf16 => &[true],
        Precision::Both => &[false, true],
    };
    if precisions.contains(&true) {
        amp::check_bf16(device).context("bf16 autocast")?;
    }
    let cfg = model_config(args.model);
    let model = LocVtp::new(&cfg, device, args.seed);
    tch::manual_seed(args.seed);
    let bench = Bench { args, device, cfg, model };
    let mut out = Vec::new();
    for &bf16 in precisions {
        if matches!(args.task, Task::Extract | Task::All) {
            eprintln!("extract {} ...", if bf16 { "bf16" } else { "fp32" });
            let r = bench.extract(bf16)?;
            println!("{r}");
            out.push(r);
        }
        if matches!(args.task, Task::Train | Task::All) {
            eprintln!("train {} ...", if bf16 { "bf16" } else { "fp32" });
            let r = bench.train(bf16)?;
            println!("{r}");
            out.push(r);
        }
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(results) => {
            eprintln!("{:<8} {:<14} {:>6} {:>10} {:>12}", "task", "precision", "batch", "ms/iter", "rate");
            for r in &results {
                eprintln!(
                    "{:<8} {:<14} {:>6} {:>10.2} {:>8.1} {}/s",
                    r["task"].as_str().unwrap_or(""),
                    r["precision"].as_str().unwrap_or(""),
                    r["batch"],
                    r["ms_per_iter"].as_f64().unwrap_or(0.0),
                    r["per_s"].as_f64().unwrap_or(0.0),
                    r["unit"].as_str().unwrap_or(""),
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
