//! End to end: the decode stage alone, the encoder alone, and a whole
//! extraction run (a graph built as values) over the same videos.

use super::{best_of, cores, decode_parallel, load_avg, verdict, BenchArgs, VideoSet};
use crate::graph::{GraphBuilder, RunOptions};
use crate::run::summary::RunSummary;
use crate::run::{self, Cluster, RunFlags};
use crate::stage_types::c3d_encode::C3dEncode;
use crate::stage_types::decode::Decode;
use crate::stage_types::dense_clips::DenseClips;
use crate::stage_types::hdf5_writer::Hdf5Writer;
use crate::stage_types::video_files::VideoFiles;
use anyhow::{bail, Context, Result};
use locvtp_media::decode::DecodeOptions;
use locvtp_model::device::Device;
use locvtp_model::{normalise_u8_clips, Layer, ModelConfig};
use locvtp_operators::encode::{load_encoder, EncodeConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// Time to push `clips` synthetic u8 clips through the encoder, batch by
/// batch, as the encode operator does (host u8 batch, to the device,
/// normalise, encode, features back to the host).
fn encode_only(cfg: &EncodeConfig, clips: u64) -> Result<Duration> {
    let model = load_encoder(cfg)?;
    let (b, s, f) = (cfg.batch_size as i64, cfg.model.frame_size, cfg.model.frames_per_segment);
    let pixels: Vec<u8> = (0..cfg.batch_size * cfg.clip_bytes()).map(|i| (i * 7 % 251) as u8).collect();
    let batches = clips.div_ceil(cfg.batch_size as u64);
    let dim = cfg.feature_dim();
    let t = Instant::now();
    for _ in 0..batches {
        let values = tch::no_grad(|| {
            let u8s = Tensor::from_slice(&pixels).reshape([b, f, s, s, 3]).to_device(model.device());
            let (_, projected) = model.encode_clips(&normalise_u8_clips(&u8s), false);
            let out = projected.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
            let mut v = vec![0f32; cfg.batch_size * dim];
            out.copy_data(&mut v, cfg.batch_size * dim);
            v
        });
        std::hint::black_box(values);
    }
    Ok(t.elapsed())
}

/// One `locvtp-flow run` of an extraction graph over `paths`.
fn extraction_run(
    args: &BenchArgs,
    paths: &[PathBuf],
    model: &Path,
    threads: usize,
    device: Device,
) -> Result<RunSummary> {
    let dir = std::path::absolute(args.out.join("e2e"))?;
    let videos = dir.join("videos");
    let output = dir.join("run");
    let _ = std::fs::remove_dir_all(&videos);
    let _ = std::fs::remove_dir_all(&output);
    std::fs::create_dir_all(&videos)?;
    // Numbered links: a video listed twice is two videos to the run, and
    // the run's (sorted) order is the order of `paths`.
    for (i, p) in paths.iter().enumerate() {
        let target = std::path::absolute(p)?;
        let name = p.file_name().context("video without a file name")?.to_string_lossy();
        std::os::unix::fs::symlink(&target, videos.join(format!("{i:05}-{name}")))?;
    }
    let decode = Decode {
        threads,
        decode: DecodeOptions { codec_threads: 1, decoder: args.decoder, ..DecodeOptions::default() },
        ..Decode::default()
    };
    let encode = C3dEncode { model: model.to_path_buf(), device, batch_size: args.batch_size, ..C3dEncode::default() };
    let run = RunOptions { output_dir: output, seed: 0, max_in_flight: 8, log_every_s: 10.0 };
    let graph = GraphBuilder::new(run)
        .stage("videos", &VideoFiles::in_folder(videos), &[])
        .stage("decode", &decode, &["videos"])
        .stage("clips", &DenseClips::default(), &["decode"])
        .stage("encode", &encode, &["clips"])
        .stage("write", &Hdf5Writer::default(), &["encode"])
        .build(&dir.join("extract (bench)"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cluster = Cluster {
        threads: 1,
        processes: 1,
        process: 0,
        hostfile: None,
        connect_timeout: Duration::from_secs(60),
        secret: None,
    };
    let flags = RunFlags { strict: true, quiet: true };
    let summary = run::run(&graph, &cluster, &flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(f) = &summary.fatal {
        bail!("the extraction run failed: {f}");
    }
    Ok(summary)
}

/// End to end over one set of videos. Each set is measured on its own: in a
/// folder that mixes slow-to-decode and fast-to-decode videos, the encoder
/// idles while the slow ones decode and the decoder while the encoder works
/// off the fast ones, whatever the overlap, so a mixed run measures the order
/// of the videos as much as the pipeline.
pub(super) fn bench_e2e(args: &BenchArgs, set: &VideoSet) -> Result<Value> {
    let passes = args.e2e_clips.div_ceil(set.clips.max(1)).max(1);
    let paths: Vec<PathBuf> = (0..passes).flat_map(|_| set.paths.iter().cloned()).collect();
    let clips = set.clips * passes;
    let model_path = std::path::absolute(&args.model)?;
    let model = ModelConfig::from_toml_file(&model_path)?;
    let choice = Device::try_from(args.device.clone()).map_err(anyhow::Error::msg)?;
    choice.check_available()?;
    let device = choice.for_worker(0);
    let cfg = EncodeConfig {
        stage: "encode".into(),
        model,
        checkpoint: None,
        layer: Layer::Projection,
        device,
        batch_size: args.batch_size,
        queue: 2,
        seed: 0,
        precision: locvtp_model::amp::Precision::Auto,
    };
    let on_cpu = device == tch::Device::Cpu;
    let threads = args.e2e_decoder_threads.unwrap_or(if on_cpu { (cores() / 2).max(1) } else { cores() }).max(1);
    let torch_threads = args.torch_threads.or(on_cpu.then(|| cores().saturating_sub(threads).max(1)));
    if let Some(n) = torch_threads {
        tch::set_num_threads(n as i32);
    }
    println!(
        "\n== end to end, {}: {} videos ({passes} x {}), {clips} clips; model {} on {device:?}, batch {}, {threads} decoder threads, {} torch threads (best of {}; load {})",
        set.label,
        paths.len(),
        set.paths.len(),
        args.model.display(),
        args.batch_size,
        tch::get_num_threads(),
        args.repeat,
        load_avg()
    );
    let (decode, _) = best_of(args.repeat, || decode_parallel(&paths, threads, 1, args.decoder))?;
    let (_, encode) = best_of(args.repeat, || encode_only(&cfg, clips))?;
    let (full, summary) = best_of(args.repeat, || extraction_run(args, &paths, &model_path, threads, choice))?;
    if summary.clips != clips {
        bail!("the extraction run wrote {} clips, expected {clips}", summary.clips);
    }
    let rate = |d: Duration| clips as f64 / d.as_secs_f64();
    println!(
        "  {:<46} {:>8.2} s {:>9.1} clips/s",
        format!("decode only ({threads} decoder threads, {:?})", args.decoder),
        decode.as_secs_f64(),
        rate(decode)
    );
    println!(
        "  {:<46} {:>8.2} s {:>9.1} clips/s",
        "encode only (synthetic u8 clips)",
        encode.as_secs_f64(),
        rate(encode)
    );
    println!(
        "  {:<46} {:>8.2} s {:>9.1} clips/s",
        "extraction (locvtp-flow run, whole process)",
        full.as_secs_f64(),
        rate(full)
    );
    let slower = decode.max(encode).as_secs_f64();
    let ratio = full.as_secs_f64() / slower;
    println!("  extraction / max(decode, encode) = {ratio:.2} (<= 1.15: {})", verdict(ratio <= 1.15));
    println!(
        "  (decode + encode = {:.2} s: the time without any overlap)",
        decode.as_secs_f64() + encode.as_secs_f64()
    );
    Ok(json!({
        "videos": set.label, "count": paths.len(), "passes": passes, "clips": clips, "model": args.model.display().to_string(), "device": format!("{device:?}"),
        "batch_size": args.batch_size, "decoder_threads": threads, "torch_threads": tch::get_num_threads(),
        "decode_s": decode.as_secs_f64(), "encode_s": encode.as_secs_f64(), "extraction_s": full.as_secs_f64(),
        "ratio": ratio, "encoder_busy_share": summary.encoder_busy_share, "load_after": load_avg(),
        "decoder": args.decoder, "nvdec_passes": summary.nvdec_passes, "decode_passes": summary.decode_passes,
    }))
}
