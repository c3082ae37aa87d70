//! Builds and drives the pre-training topology.
//!
//! Two dataflows run in each worker:
//! 1. Alignment: videos are probed (sharded by id) and joined with their
//!    narration by video id in differential-dataflow; the joined pairs are
//!    merged into caption clips, clamped to each video's real duration, and
//!    gathered on worker 0, which records every dropped clip and why.
//! 2. Training: worker 0 schedules each epoch (a seeded shuffle of all
//!    caption clips into global batches) and sends one job per video and
//!    epoch at the first step that needs it; the `decode` and `segments`
//!    stages run fused as one pass per video that cuts every scheduled
//!    sample; the `train` stage trains data-parallel replicas
//!    (operators/src/train.rs); the `metrics` and `checkpoints` sinks are
//!    served on worker 0 after every step.

use super::listing::list_videos;
use super::summary::{RunSummary, VideoCounts};
use super::{Cluster, ConfigError, RunFlags};
use crate::graph::{Graph, NarrationFormat, StageOptions};
use anyhow::{bail, Context, Result};
use differential_dataflow::AsCollection;
use locvtp_media::decode::DecodeOptions as MediaDecodeOptions;
use locvtp_model::text::TextEncoder;
use locvtp_model::train::{load_training_checkpoint, save_training_checkpoint, Adam, MultiStepLr, TrainMeta};
use locvtp_model::{parse_device, LocVtp, ModelConfig};
use locvtp_narration::align::{align_video, AlignConfig};
use locvtp_narration::{VideoCues, Warning};
use locvtp_operators::train::{
    decode_samples, train, Replica, SampleConfig, SampleJob, StepReport, TrainConfig, VideoJob,
};
use locvtp_operators::writer::ErrorLog;
use locvtp_operators::{ItemError, RunStats, VideoItem};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// Video metadata as a join value: fixed-point so that it is totally
/// ordered, as differential-dataflow requires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct MetaKey {
    duration_us: u64,
    fps_micro: u64,
    frames: u64,
}

struct Stages {
    videos: crate::graph::VideoFilesOptions,
    narration: crate::graph::NarrationOptions,
    align: AlignConfig,
    decode: crate::graph::DecodeOptions,
    segments: crate::graph::SegmentsOptions,
    train: crate::graph::TrainOptions,
    checkpoints_dir: PathBuf,
    metrics_path: Option<PathBuf>,
    plot_path: Option<PathBuf>,
}

struct Plan {
    stages: Stages,
    model: ModelConfig,
    text_dir: PathBuf,
    videos: Vec<VideoItem>,
    cues: Vec<VideoCues>,
    seed: u64,
    max_in_flight: usize,
    errors_path: PathBuf,
}

fn find_stages(graph: &Graph) -> Result<Stages> {
    let mut videos = None;
    let mut narration = None;
    let mut align = None;
    let mut decode = None;
    let mut segments = None;
    let mut train = None;
    let mut checkpoints_dir = graph.run.output_dir.join("checkpoints");
    let mut metrics_path = None;
    let mut plot_path = None;
    for s in &graph.stages {
        match &s.options {
            StageOptions::VideoFiles(o) => videos = Some(o.clone()),
            StageOptions::Narration(o) => narration = Some(o.clone()),
            StageOptions::Probe(_) => {}
            StageOptions::Align(o) => {
                align = Some(AlignConfig {
                    min_seconds: o.min_seconds,
                    max_seconds: o.max_seconds,
                    max_words: o.max_words,
                    min_clip_seconds: o.min_clip_seconds,
                })
            }
            StageOptions::Decode(o) => decode = Some(o.clone()),
            StageOptions::Segments(o) => segments = Some(o.clone()),
            StageOptions::Train(o) => train = Some(o.clone()),
            StageOptions::Checkpoints(o) => checkpoints_dir = o.dir.clone(),
            StageOptions::Metrics(o) => {
                metrics_path = Some(o.path.clone());
                plot_path = Some(o.plot.clone());
            }
            other => bail!(
                "{}: stages.{}: type `{}` is not part of the pre-training topology",
                graph.file.display(),
                s.name,
                other.type_name()
            ),
        }
    }
    let need = |what: &str| anyhow::anyhow!("{}: a pre-training graph needs a `{what}` stage", graph.file.display());
    Ok(Stages {
        videos: videos.ok_or_else(|| need("video_files"))?,
        narration: narration.ok_or_else(|| need("narration"))?,
        align: align.ok_or_else(|| need("align"))?,
        decode: decode.ok_or_else(|| need("decode"))?,
        segments: segments.ok_or_else(|| need("segments"))?,
        train: train.ok_or_else(|| need("train"))?,
        checkpoints_dir,
        metrics_path,
        plot_path,
    })
}

/// Reads every narration file; unreadable ones become per-item errors.
fn read_narration(o: &crate::graph::NarrationOptions, errors: &mut Vec<ItemError>) -> Result<Vec<VideoCues>> {
    let mut out = Vec::new();
    let mut note =
        |id: &str, reason: String| errors.push(ItemError { video_id: id.into(), stage: "narration".into(), reason });
    let warn = |w: &Warning| tracing::debug!("narration: {w}");
    if let Some(file) = &o.file {
        let is_json = matches!(o.format, NarrationFormat::Howto100mJson)
            || (matches!(o.format, NarrationFormat::Auto) && file.extension().is_some_and(|e| e == "json"));
        if is_json {
            locvtp_narration::howto100m::read_file(file, |r| {
                match r {
                    Ok(v) => out.push(v),
                    Err(e) => note("?", e.to_string()),
                }
                std::ops::ControlFlow::Continue(())
            })
            .with_context(|| format!("{}", file.display()))?;
        } else {
            let parsed =
                locvtp_narration::annotation_list::read_file(file).with_context(|| format!("{}", file.display()))?;
            let mut by_video: BTreeMap<String, Vec<locvtp_narration::Cue>> = BTreeMap::new();
            for c in parsed.items {
                by_video.entry(c.video_id.clone()).or_default().push(locvtp_narration::Cue {
                    start: c.start_s,
                    end: c.end_s,
                    text: c.caption.clone(),
                    words: Vec::new(),
                });
            }
            for e in parsed.errors {
                note("?", e.to_string());
            }
            out.extend(by_video.into_iter().map(|(video_id, cues)| VideoCues { video_id, cues }));
        }
    } else if let Some(dir) = &o.dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read narration folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "vtt" || e == "srt"))
            .collect();
        files.sort();
        for path in files {
            let id = locvtp_narration::video_id_from_path(&path).unwrap_or_default();
            match locvtp_narration::read_subtitle_file(&path) {
                Ok((cues, warnings)) => {
                    warnings.iter().for_each(warn);
                    out.push(VideoCues { video_id: id, cues });
                }
                Err(e) => note(&id, e.to_string()),
            }
        }
    }
    Ok(out)
}

fn prepare(graph: &Graph, errors: &mut Vec<ItemError>) -> Result<Plan> {
    let stages = find_stages(graph)?;
    let model = ModelConfig::from_toml_file(&stages.train.model).context("stages.train.model")?;
    if model.num_segments as usize != stages.segments.num_segments
        || model.frames_per_segment as usize != stages.segments.frames_per_segment
    {
        bail!(
            "{}: segments take {}x{} frames but the model ({}) is built for num_segments {} and frames_per_segment {}",
            graph.file.display(),
            stages.segments.num_segments,
            stages.segments.frames_per_segment,
            stages.train.model.display(),
            model.num_segments,
            model.frames_per_segment
        );
    }
    let text_dir = match &stages.train.text_encoder {
        Some(p) => p.clone(),
        None => locvtp_model::text::default_text_encoder_dir().ok_or_else(|| {
            anyhow::anyhow!("stages.train.text_encoder is not set and the packaged all-MiniLM-L6-v2 was not found (run scripts/setup.sh)")
        })?,
    };
    let probe_text = TextEncoder::load(&text_dir, tch::Device::Cpu)
        .with_context(|| format!("stages.train.text_encoder {}", text_dir.display()))?;
    if probe_text.hidden_size() != model.text_dim {
        bail!(
            "the text encoder's hidden size is {} but the model's text_dim is {}",
            probe_text.hidden_size(),
            model.text_dim
        );
    }
    parse_device(&stages.train.device.to_string())?;
    std::fs::create_dir_all(&graph.run.output_dir)
        .with_context(|| format!("{}: cannot create the output folder", graph.run.output_dir.display()))?;
    std::fs::create_dir_all(&stages.checkpoints_dir)
        .with_context(|| format!("{}: cannot create", stages.checkpoints_dir.display()))?;
    let listing = list_videos(&stages.videos)?;
    errors.extend(listing.rejected);
    let cues = read_narration(&stages.narration, errors)?;
    Ok(Plan {
        stages,
        model,
        text_dir,
        videos: listing.videos,
        cues,
        seed: graph.run.seed,
        max_in_flight: graph.run.max_in_flight,
        errors_path: graph.run.output_dir.join("errors.jsonl"),
    })
}

/// One caption clip of the training set.
#[derive(Debug, Clone)]
struct TrainClip {
    video: usize,
    start_s: f64,
    end_s: f64,
    text: String,
}

/// Epoch schedule: a seeded shuffle of all clips cut into global batches;
/// a batch smaller than the number of workers is dropped so that every
/// worker has a share of every step.
fn schedule_epoch(clips: &[TrainClip], epoch: u32, batch: usize, peers: usize, seed: u64) -> Vec<(usize, u64, u32)> {
    let mut order: Vec<usize> = (0..clips.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (u64::from(epoch) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)));
    let usable = if !order.len().is_multiple_of(batch) && order.len() % batch < peers {
        order.len() - order.len() % batch
    } else {
        order.len()
    };
    order.truncate(usable);
    order.into_iter().enumerate().map(|(i, c)| (c, (i / batch) as u64, (i % batch) as u32)).collect()
}

fn steps_per_epoch(n: usize, batch: usize, peers: usize) -> u64 {
    let rem = n % batch;
    (n / batch + usize::from(rem != 0 && rem >= peers)) as u64
}

/// Caption embeddings are cached per user, so that every run on the same
/// captions with the same encoder reuses them (`LOCVTP_CACHE`, by default
/// `~/.cache/locvtp-flow`).
fn text_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("LOCVTP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/locvtp-flow")))?;
    Some(base.join("text-embeddings"))
}

/// Keeps the metrics lines of steps up to `step`.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    locvtp_model::checkpoint::atomic_write(path, kept.as_bytes())
}

fn append_line(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
        let _ = f.sync_data();
    }
}

pub fn run_pretrain(graph: &Graph, cluster: &Cluster, flags: &RunFlags) -> Result<RunSummary> {
    let started = Instant::now();
    let mut errors = Vec::new();
    let plan = prepare(graph, &mut errors).map_err(ConfigError::wrap)?;
    // Items are retried on every run: errors of earlier runs are stale.
    let _ = std::fs::remove_file(&plan.errors_path);
    let interrupted = super::interrupt::flag();
    let _ = flags;
    let stats = Arc::new(RunStats::default());
    RunStats::add(&stats.videos_total, plan.videos.len() as u64);
    let errors = Arc::new(Mutex::new(errors));
    let plan = Arc::new(plan);
    let outcome: Arc<Mutex<(usize, u64, Option<String>)>> = Arc::new(Mutex::new((0, 0, None)));
    {
        let (plan, stats, errors, outcome, interrupted) =
            (plan.clone(), stats.clone(), errors.clone(), outcome.clone(), interrupted.clone());
        let guards = cluster.execute(move |worker| {
            let index = worker.index();
            let peers = worker.peers();

            // 1. Probe, join with narration, gather on worker 0.
            let mut video_in = InputHandle::<u64, CapacityContainerBuilder<Vec<VideoItem>>>::new();
            let mut cue_in = InputHandle::<u64, CapacityContainerBuilder<Vec<((String, String), u64, isize)>>>::new();
            let probe_a = ProbeHandle::new();
            let joined: Rc<RefCell<Vec<(String, MetaKey, String)>>> = Rc::new(RefCell::new(Vec::new()));
            let probed: Rc<RefCell<Vec<Result<String, ItemError>>>> = Rc::new(RefCell::new(Vec::new()));
            worker.dataflow::<u64, _, _>(|scope| {
                let metas = video_in.to_stream(scope).exchange(|v: &VideoItem| locvtp_operators::shard_of(&v.id)).map(
                    |v: VideoItem| match locvtp_media::decode::probe(&v.path) {
                        Ok(info) => Ok((
                            v.id.to_string(),
                            MetaKey {
                                duration_us: (info.duration_s.max(0.0) * 1e6) as u64,
                                fps_micro: (info.fps.max(0.0) * 1e6) as u64,
                                frames: info.declared_frames,
                            },
                        )),
                        Err(e) => Err(ItemError {
                            video_id: v.id.to_string(),
                            stage: "probe".into(),
                            reason: format!("{e:#}"),
                        }),
                    },
                );
                let probed_sink = probed.clone();
                metas
                    .clone()
                    .map(|r| r.map(|(id, _)| id))
                    .exchange(|_| 0)
                    .inspect(move |r| probed_sink.borrow_mut().push(r.clone()))
                    .probe_with(&probe_a);
                let meta_coll = metas
                    .flat_map(|r: Result<(String, MetaKey), ItemError>| r.ok().map(|kv| (kv, 0u64, 1isize)))
                    .as_collection();
                let cue_coll = cue_in.to_stream(scope).as_collection();
                let sink = joined.clone();
                meta_coll
                    .join(cue_coll)
                    .inner
                    .map(|((id, (meta, cues)), _t, _r)| (id, meta, cues))
                    // Every worker needs the caption clips to know the
                    // schedule's length (the learning-rate epochs).
                    .broadcast()
                    .inspect(move |row| sink.borrow_mut().push(row.clone()))
                    .probe_with(&probe_a);
            });
            if index == 0 {
                for v in &plan.videos {
                    video_in.send(v.clone());
                }
                for c in &plan.cues {
                    cue_in.send(((c.video_id.clone(), serde_json::to_string(&c.cues).expect("cues serialise")), 0, 1));
                }
            }
            video_in.advance_to(1);
            cue_in.advance_to(1);
            drop(video_in);
            drop(cue_in);
            while probe_a.less_than(&1) {
                worker.step_or_park(None);
            }

            // Every worker turns the joined pairs into the same caption
            // clips; worker 0 records what was dropped.
            let mut clips: Vec<TrainClip> = Vec::new();
            let mut fps_of: HashMap<String, f64> = HashMap::new();
            {
                let mut local_errors = Vec::new();
                let errs = &mut local_errors;
                let mut with_text = std::collections::HashSet::new();
                let mut rows = joined.borrow().clone();
                rows.sort();
                let video_index: HashMap<&str, usize> =
                    plan.videos.iter().enumerate().map(|(i, v)| (&*v.id, i)).collect();
                for (id, meta, cues_json) in rows {
                    with_text.insert(id.clone());
                    let cues: Vec<locvtp_narration::Cue> = serde_json::from_str(&cues_json).expect("cues round-trip");
                    let clamped = align_video(
                        &VideoCues { video_id: id.clone(), cues },
                        meta.duration_us as f64 / 1e6,
                        &plan.stages.align,
                    );
                    for d in clamped.dropped {
                        errs.push(ItemError {
                            video_id: id.clone(),
                            stage: "align".into(),
                            reason: format!(
                                "caption clip {:.2}-{:.2}s dropped: {:?}",
                                d.clip.start_s, d.clip.end_s, d.reason
                            ),
                        });
                    }
                    fps_of.insert(id.clone(), meta.fps_micro as f64 / 1e6);
                    for c in clamped.kept {
                        clips.push(TrainClip {
                            video: video_index[id.as_str()],
                            start_s: c.start_s,
                            end_s: c.end_s,
                            text: c.text,
                        });
                    }
                }
                for r in probed.borrow().iter() {
                    match r {
                        Err(e) => errs.push(e.clone()),
                        Ok(id) if !with_text.contains(id) => errs.push(ItemError {
                            video_id: id.clone(),
                            stage: "align".into(),
                            reason: "no narration for this video".into(),
                        }),
                        Ok(_) => {}
                    }
                }
                if index == 0 {
                    errors.lock().unwrap().extend(local_errors);
                    tracing::info!("{} caption clips from {} videos", clips.len(), with_text.len());
                }
            }

            // 2. Training.
            let tr = &plan.stages.train;
            let device = parse_device(&tr.device.to_string()).expect("checked in prepare");
            if device.is_cuda() {
                // Segment shapes are fixed; only the last batch of an epoch
                // differs, so cuDNN's autotuner pays off.
                tch::Cuda::cudnn_set_benchmark(true);
            }
            let mut model = LocVtp::new(&plan.model, device, plan.seed as i64);
            let last = plan.stages.checkpoints_dir.join("last.safetensors");
            let (adam, first_step) = if tr.resume && last.exists() {
                let (adam, meta) = load_training_checkpoint(&last, &mut model)
                    .unwrap_or_else(|e| panic!("resuming from {}: {e:#}", last.display()));
                if index == 0 {
                    tracing::info!("resuming from {} (epoch {}, step {})", last.display(), meta.epoch, meta.step);
                    if let Some(m) = &plan.stages.metrics_path {
                        // Steps after the checkpoint are trained again: their
                        // old lines go, so each step keeps one line.
                        if let Err(e) = truncate_metrics(m, meta.step as u64) {
                            tracing::warn!("{}: {e:#}", m.display());
                        }
                    }
                }
                (adam, meta.step as u64)
            } else {
                if let Some(init) = &tr.init_checkpoint {
                    locvtp_model::checkpoint::load_weights(&mut model.vs, init).unwrap_or_else(|e| panic!("{e:#}"));
                }
                (Adam::new(&model), 0)
            };
            let text = locvtp_operators::text_cache::TextCache::new(
                TextEncoder::load(&plan.text_dir, device).expect("checked in prepare"),
                text_cache_dir(),
            );
            let batch = tr.batch_size.max(1);
            let spe = steps_per_epoch(clips.len(), batch, peers).max(1);
            let schedule =
                MultiStepLr { lr: tr.lr, milestones: tr.milestones.iter().map(|&m| m as i64).collect(), gamma: 0.1 };
            let train_cfg = TrainConfig {
                weights: locvtp_model::loss::LossWeights { tau: tr.tau, splice: tr.w_splice, fg: tr.w_fg },
                schedule,
                seed: plan.seed,
                num_segments: plan.stages.segments.num_segments,
                frames_per_segment: plan.stages.segments.frames_per_segment,
                frame_size: plan.stages.decode.frame_size as usize,
                steps_per_epoch: spe,
                first_step,
                micro_batches: tr.micro_batches.unwrap_or(peers).max(1),
                errors: errors.clone(),
                precision: tr.precision,
            };
            let total_steps = spe * tr.epochs as u64;
            let metrics_path = plan.stages.metrics_path.clone();
            let plot_path = plan.stages.plot_path.clone();
            let ckpt_dir = plan.stages.checkpoints_dir.clone();
            let every = tr.checkpoint_every_steps.map(|k| k as u64);
            let seed = plan.seed;
            let outcome_w = outcome.clone();
            let interrupted = interrupted.clone();
            let on_step = Box::new(move |rep: &Replica, r: &StepReport| {
                let mut line = serde_json::json!({
                    "step": r.step + 1, "epoch": r.epoch, "lr": r.lr, "samples": r.samples,
                    "samples_per_s": r.samples_per_s, "data_wait_share": r.data_wait_share,
                    "text_encoder_forwards": r.text_encoder_forwards,
                });
                for (k, v) in &r.terms {
                    line[k.as_str()] = serde_json::json!(v);
                }
                if let Some(p) = &metrics_path {
                    append_line(p, &line.to_string());
                }
                tracing::info!(
                    "step {}/{} epoch {} loss {:.4}",
                    r.step + 1,
                    total_steps,
                    r.epoch,
                    r.terms.iter().find(|(k, _)| k == "total").map(|t| t.1).unwrap_or(f64::NAN)
                );
                let done = r.step + 1;
                let epoch_end = done.is_multiple_of(spe);
                if epoch_end || every.is_some_and(|k| done.is_multiple_of(k)) {
                    let meta =
                        TrainMeta { epoch: (done / spe) as i64, step: done as i64, seed, extra: BTreeMap::new() };
                    let named = if epoch_end {
                        format!("epoch-{:03}.safetensors", done / spe)
                    } else {
                        format!("step-{done:06}.safetensors")
                    };
                    let path = ckpt_dir.join(named);
                    let ok = save_training_checkpoint(&path, &rep.model, &rep.adam, &meta).and_then(|_| {
                        save_training_checkpoint(&ckpt_dir.join("last.safetensors"), &rep.model, &rep.adam, &meta)
                    });
                    if let Err(e) = ok {
                        outcome_w.lock().unwrap().2 = Some(format!("checkpoint {}: {e:#}", path.display()));
                    }
                    if let (Some(m), Some(p)) = (&metrics_path, &plot_path) {
                        if let Err(e) = super::plot::plot_losses(m, p) {
                            tracing::warn!("loss curve {}: {e:#}", p.display());
                        }
                    }
                }
                outcome_w.lock().unwrap().1 = done;
                if super::interrupt::requested(&interrupted) {
                    // Stop at a step boundary: the finished steps are in the
                    // checkpoint and the metrics, and the same command
                    // continues from here.
                    let meta =
                        TrainMeta { epoch: (done / spe) as i64, step: done as i64, seed, extra: BTreeMap::new() };
                    let path = ckpt_dir.join("last.safetensors");
                    match save_training_checkpoint(&path, &rep.model, &rep.adam, &meta) {
                        Ok(()) => eprintln!(
                            "interrupted after step {done}: state saved to {}; run the same command to resume",
                            path.display()
                        ),
                        Err(e) => eprintln!("interrupted after step {done}, but the checkpoint failed: {e:#}"),
                    }
                    std::process::exit(i32::from(super::interrupt::exit_code()));
                }
            });

            let mut jobs_in = InputHandle::<u64, CapacityContainerBuilder<Vec<VideoJob>>>::new();
            let probe_b = ProbeHandle::new();
            let sample_cfg = SampleConfig {
                decode: MediaDecodeOptions {
                    frame_size: plan.stages.decode.frame_size,
                    codec_threads: plan.stages.decode.codec_threads,
                    chunk_frames: plan.stages.decode.chunk_frames,
                },
                threads: plan.stages.decode.threads,
                queue: plan.stages.decode.queue,
                num_segments: plan.stages.segments.num_segments,
                frames_per_segment: plan.stages.segments.frames_per_segment,
            };
            worker.dataflow::<u64, _, _>(|scope| {
                let samples = decode_samples(jobs_in.to_stream(scope), sample_cfg, stats.clone());
                train(samples, train_cfg, Replica { model, adam, text }, stats.clone(), on_step).probe_with(&probe_b);
            });
            if index == 0 {
                outcome.lock().unwrap().0 = clips.len();
                let mut jobs: Vec<(u64, VideoJob)> = Vec::new();
                for epoch in 0..tr.epochs as u32 {
                    let mut per_video: BTreeMap<usize, Vec<SampleJob>> = BTreeMap::new();
                    for (c, step_in_epoch, slot) in schedule_epoch(&clips, epoch, batch, peers, seed) {
                        let step = u64::from(epoch) * spe + step_in_epoch;
                        if step < first_step {
                            continue;
                        }
                        let clip = &clips[c];
                        per_video.entry(clip.video).or_default().push(SampleJob {
                            step,
                            slot,
                            epoch,
                            start_s: clip.start_s,
                            end_s: clip.end_s,
                            text: clip.text.clone(),
                            seed: seed ^ (step << 20) ^ u64::from(slot) ^ 0x5eed,
                        });
                    }
                    for (v, mut list) in per_video {
                        list.sort_by_key(|j| (j.step, j.slot));
                        let item = plan.videos[v].clone();
                        let fps = fps_of[&*item.id];
                        jobs.push((list[0].step, VideoJob { item, fps, clips: list }));
                    }
                }
                jobs.sort_by_key(|(t, j)| (*t, j.item.id.clone()));
                let window = plan.max_in_flight as u64;
                for (t, job) in jobs {
                    // Nothing earlier than `t` will be sent: saying so first
                    // lets the steps before it complete while we wait.
                    jobs_in.advance_to(t);
                    while probe_b.less_than(&t.saturating_sub(window)) {
                        worker.step_or_park(None);
                    }
                    jobs_in.send(job);
                }
            }
            drop(jobs_in);
            while worker.step_or_park(None) {}
        })?;
        for r in guards.join() {
            r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
        }
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    let mut log = ErrorLog::new(plan.errors_path.clone());
    for e in &errors {
        log.record(e);
    }
    let (clips, steps, fatal) = outcome.lock().unwrap().clone();
    let listed: std::collections::HashSet<&str> = plan.videos.iter().map(|v| &*v.id).collect();
    // Videos of the listing that gave no training sample; a dropped caption
    // clip or a narration file without a video does not count.
    let failed_videos: std::collections::HashSet<&str> = errors
        .iter()
        .filter(|e| listed.contains(e.video_id.as_str()))
        .filter(|e| e.stage != "align" || e.reason.starts_with("no narration"))
        .map(|e| e.video_id.as_str())
        .collect();
    let videos = VideoCounts {
        total: plan.videos.len() as u64,
        processed: plan.videos.len() as u64 - failed_videos.len().min(plan.videos.len()) as u64,
        skipped: 0,
        failed: failed_videos.len() as u64,
    };
    let mut outputs = BTreeMap::new();
    outputs.insert("checkpoints".to_string(), plan.stages.checkpoints_dir.display().to_string());
    if let Some(m) = &plan.stages.metrics_path {
        outputs.insert("metrics".to_string(), m.display().to_string());
        if let Some(p) = &plan.stages.plot_path {
            if cluster.is_first_process() && m.exists() {
                match super::plot::plot_losses(m, p) {
                    Ok(()) => {
                        outputs.insert("loss_curve".to_string(), p.display().to_string());
                    }
                    Err(e) => tracing::warn!("loss curve {}: {e:#}", p.display()),
                }
            }
        }
    }
    let mut summary = RunSummary::new(graph, "pretrain", cluster, started.elapsed(), videos, &stats, outputs, fatal);
    summary.training = Some(serde_json::json!({
        "caption_clips": clips,
        "steps": steps,
        "samples_per_s": RunStats::get(&stats.clips_encoded) as f64 / started.elapsed().as_secs_f64(),
    }));
    Ok(summary)
}
