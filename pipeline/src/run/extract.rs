//! Builds and drives the extraction topology: the graph's stages become
//! timely operators wired as the graph file says, videos enter on worker 0
//! at one timestamp each, and a probe at the writer keeps at most
//! `max_in_flight` videos per worker between the two ends.

use super::evaluate::{EvalModel, VideoFeatures};
use super::listing::{list_videos, Listing};
use super::summary::{RunSummary, VideoCounts};
use super::{Cluster, RunFlags};
use crate::graph::{Graph, StageOptions};
use anyhow::{bail, Context, Result};
use locvtp_media::decode::DecodeOptions as MediaDecodeOptions;
use locvtp_media::sampling::Tail as MediaTail;
use locvtp_operators::clips::{dense_clips, DenseClipConfig};
use locvtp_operators::collect::{collect_features, CollectedVideo};
use locvtp_operators::decode::{decode, DecodeConfig};
use locvtp_operators::encode::{encode, load_encoder, EncodeConfig, Layer};
use locvtp_operators::writer::{write_features, ErrorLog, WriterConfig, WriterReport};
use locvtp_operators::{ClipMsg, FeatureMsg, FrameMsg, RunStats, VideoItem};
use locvtp_store::{spool_path, RunAttrs, Spool};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle, Stream};

/// Everything a worker needs, prepared and checked before the dataflow
/// starts so that configuration problems never cost work.
struct Plan {
    graph: Graph,
    /// Videos still to do, in timestamp order.
    todo: Vec<VideoItem>,
    encoders: BTreeMap<String, EncodeConfig>,
    writers: BTreeMap<String, WriterConfig>,
    /// Spools of the writers, taken by worker 0.
    spools: Mutex<BTreeMap<String, Spool>>,
    /// Evaluation sinks and the encoder behind each.
    evals: BTreeMap<String, (crate::graph::EvaluateOptions, EvalModel)>,
}

/// Features gathered by an evaluation sink on worker 0.
type SharedVideos = Rc<RefCell<BTreeMap<String, CollectedVideo>>>;

enum AnyStream<'s> {
    Videos(Stream<'s, u64, Vec<VideoItem>>),
    Frames(Stream<'s, u64, Vec<FrameMsg>>),
    Clips(Stream<'s, u64, Vec<ClipMsg>>),
    Features(Stream<'s, u64, Vec<FeatureMsg>>),
}

fn tail(t: crate::graph::Tail) -> MediaTail {
    match t {
        crate::graph::Tail::Pad => MediaTail::Pad,
        crate::graph::Tail::Drop => MediaTail::Drop,
    }
}

fn layer_name(l: Layer) -> &'static str {
    match l {
        Layer::Projection => "projection",
        Layer::Fc6 => "fc6",
    }
}

/// Checks and prepares the extraction run: model configs, checkpoints, the
/// video listing, output folders and earlier progress. Errors here are
/// configuration errors (exit code 2).
fn prepare(
    graph: &Graph,
    cluster: &Cluster,
    stats: &RunStats,
    interrupted: &Arc<AtomicBool>,
) -> Result<(Plan, Vec<locvtp_operators::ItemError>, usize)> {
    let out_dir = &graph.run.output_dir;
    let file = graph.file.display();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{file}: run.output_dir: {}: cannot create the output folder", out_dir.display()))?;
    let probe_file = out_dir.join(".write-test");
    std::fs::write(&probe_file, b"")
        .with_context(|| format!("{file}: run.output_dir: {}: output folder is not writable", out_dir.display()))?;
    let _ = std::fs::remove_file(&probe_file);

    let mut listing: Option<Listing> = None;
    let mut encoders = BTreeMap::new();
    let mut writers = BTreeMap::new();
    let mut clip_geometry: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut spools = BTreeMap::new();
    let mut evals = BTreeMap::new();
    let mut done_ids: HashSet<String> = HashSet::new();
    for stage in &graph.stages {
        match &stage.options {
            StageOptions::VideoFiles(o) => {
                if listing.is_some() {
                    bail!(
                        "{}: stages.{}: one video_files source per extraction graph",
                        graph.file.display(),
                        stage.name
                    );
                }
                listing = Some(list_videos(o)?);
            }
            StageOptions::Decode(_) => {}
            StageOptions::DenseClips(o) => {
                clip_geometry.insert(stage.name.clone(), (o.clip_frames as u32, o.stride as u32));
            }
            StageOptions::C3dEncode(o) => {
                let model = locvtp_model::ModelConfig::from_toml_file(&o.model)
                    .with_context(|| format!("stages.{}.model", stage.name))?;
                let cfg = EncodeConfig {
                    model,
                    checkpoint: o.checkpoint.clone(),
                    layer: match o.layer {
                        crate::graph::Layer::Projection => Layer::Projection,
                        crate::graph::Layer::Fc6 => Layer::Fc6,
                    },
                    device: o.device.to_string(),
                    batch_size: o.batch_size,
                    queue: o.queue,
                    seed: graph.run.seed as i64,
                    precision: o.precision,
                };
                if let Some(&(clip_frames, _)) = clip_geometry.get(&stage.inputs[0]) {
                    if clip_frames as i64 != cfg.model.frames_per_segment {
                        bail!(
                            "{}: stages.{}: clips of {clip_frames} frames, but the model takes {} (frames_per_segment in {})",
                            graph.file.display(),
                            stage.name,
                            cfg.model.frames_per_segment,
                            o.model.display()
                        );
                    }
                }
                // Build once here so that a bad checkpoint stops the run
                // before any work.
                load_encoder(&cfg).with_context(|| format!("stages.{}", stage.name))?;
                encoders.insert(stage.name.clone(), cfg);
            }
            StageOptions::Hdf5Writer(o) => {
                let enc_name = &stage.inputs[0];
                let enc = encoders.get(enc_name);
                let clips_name = graph.stage(enc_name).and_then(|s| s.inputs.first()).cloned().unwrap_or_default();
                let (clip_frames, stride) = clip_geometry.get(&clips_name).copied().unwrap_or((16, 16));
                let checkpoint = match enc.and_then(|e| e.checkpoint.as_ref()) {
                    Some(p) => locvtp_model::checkpoint::file_sha256(p)?,
                    None => format!("random-init:{}", graph.run.seed),
                };
                let cfg = WriterConfig {
                    path: o.path.clone(),
                    dataset: o.dataset.clone(),
                    run: RunAttrs {
                        clip_frames,
                        stride,
                        layer: enc.map(|e| layer_name(e.layer)).unwrap_or("projection").into(),
                        checkpoint,
                    },
                    errors_path: out_dir.join("errors.jsonl"),
                    interrupted: interrupted.clone(),
                };
                if cluster.is_first_process() {
                    let spool_file = spool_path(&o.path);
                    if o.path.exists() && !spool_file.exists() {
                        // A finished file from an earlier run is replaced.
                        tracing::info!("{} exists and will be replaced when this run completes", o.path.display());
                    }
                    let (spool, earlier) = Spool::open_index(&spool_file)
                        .with_context(|| format!("{file}: stages.{}.path: {}", stage.name, o.path.display()))?;
                    done_ids.extend(earlier.into_iter().map(|r| r.video_id));
                    spools.insert(stage.name.clone(), spool);
                }
                writers.insert(stage.name.clone(), cfg);
            }
            StageOptions::Evaluate(o) => {
                let enc_name = &stage.inputs[0];
                let enc = encoders.get(enc_name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: stages.{}: evaluate must be fed by a c3d_encode stage",
                        graph.file.display(),
                        stage.name
                    )
                })?;
                if enc.layer != Layer::Projection {
                    bail!(
                        "{}: stages.{}: evaluation needs projected features (stages.{enc_name}.layer = \"projection\")",
                        graph.file.display(),
                        stage.name
                    );
                }
                let clips_name = graph.stage(enc_name).and_then(|s| s.inputs.first()).cloned().unwrap_or_default();
                let (clip_frames, stride) = clip_geometry.get(&clips_name).copied().unwrap_or((16, 16));
                let model = EvalModel {
                    model: enc.model.clone(),
                    checkpoint: enc.checkpoint.clone(),
                    seed: enc.seed,
                    clip_frames: clip_frames as usize,
                    stride: stride as usize,
                };
                evals.insert(stage.name.clone(), (o.clone(), model));
            }
            _ => bail!(
                "{}: stages.{}: type `{}` is not part of the extraction topology",
                graph.file.display(),
                stage.name,
                stage.options.type_name()
            ),
        }
    }
    let listing = listing.ok_or_else(|| anyhow::anyhow!("{}: no video_files source", graph.file.display()))?;
    let skipped = listing.videos.iter().filter(|v| done_ids.contains(&*v.id)).count();
    let todo: Vec<VideoItem> = listing.videos.into_iter().filter(|v| !done_ids.contains(&*v.id)).collect();
    RunStats::add(&stats.videos_total, todo.len() as u64);
    RunStats::add(&stats.videos_skipped, skipped as u64);
    if skipped > 0 {
        tracing::info!("resuming: {skipped} videos finished by an earlier run are kept, {} to do", todo.len());
    }
    Ok((
        Plan { graph: graph.clone(), todo, encoders, writers, spools: Mutex::new(spools), evals },
        listing.rejected,
        skipped,
    ))
}

/// Runs an extraction graph to completion.
pub fn run_extract(graph: &Graph, cluster: &Cluster, flags: &RunFlags) -> Result<RunSummary> {
    let started = Instant::now();
    let stats = Arc::new(RunStats::default());
    let interrupted = super::interrupt::flag();
    let (plan, rejected, skipped) = prepare(graph, cluster, &stats, &interrupted).map_err(super::ConfigError::wrap)?;
    if cluster.is_first_process() {
        let errors_path = graph.run.output_dir.join("errors.jsonl");
        // Failed items are not in the spool, so every run retries them and
        // logs afresh; lines from an earlier run would repeat or be stale.
        if let Err(e) = std::fs::remove_file(&errors_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(anyhow::anyhow!("{}: cannot replace: {e}", errors_path.display()));
            }
        }
        let mut log = ErrorLog::new(errors_path);
        for e in &rejected {
            log.record(e);
        }
    }
    let plan = Arc::new(plan);
    let total = plan.todo.len() as u64;
    let progress = super::progress::Progress::start(
        stats.clone(),
        total,
        std::time::Duration::from_secs_f64(graph.run.log_every_s),
        flags.quiet || !cluster.is_first_process(),
    );
    let reports: Arc<Mutex<Vec<(String, WriterReport)>>> = Arc::new(Mutex::new(Vec::new()));
    type Collected = BTreeMap<String, BTreeMap<String, CollectedVideo>>;
    let collected: Arc<Mutex<Collected>> = Arc::new(Mutex::new(BTreeMap::new()));
    {
        let (plan, stats, reports, interrupted, collected) =
            (plan.clone(), stats.clone(), reports.clone(), interrupted.clone(), collected.clone());
        let guards = cluster.execute(move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<VideoItem>>>::new();
            let probe = ProbeHandle::new();
            let mut local_reports: Vec<(String, Rc<RefCell<WriterReport>>)> = Vec::new();
            let mut local_collected: Vec<(String, SharedVideos)> = Vec::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let mut streams: BTreeMap<String, AnyStream> = BTreeMap::new();
                for stage in &plan.graph.stages {
                    let get = |name: &str| streams.get(name).expect("inputs come first in topological order");
                    let made = match &stage.options {
                        StageOptions::VideoFiles(_) => Some(AnyStream::Videos(input.to_stream(scope))),
                        StageOptions::Decode(o) => {
                            let AnyStream::Videos(s) = get(&stage.inputs[0]) else { unreachable!("validated edge") };
                            let cfg = DecodeConfig {
                                options: MediaDecodeOptions {
                                    frame_size: o.frame_size,
                                    codec_threads: o.codec_threads,
                                    chunk_frames: o.chunk_frames,
                                },
                                threads: o.threads,
                                queue: o.queue,
                            };
                            Some(AnyStream::Frames(decode(s.clone(), cfg, stats.clone())))
                        }
                        StageOptions::DenseClips(o) => {
                            let AnyStream::Frames(s) = get(&stage.inputs[0]) else { unreachable!("validated edge") };
                            let cfg = DenseClipConfig { clip_frames: o.clip_frames, stride: o.stride, tail: tail(o.tail) };
                            Some(AnyStream::Clips(dense_clips(s.clone(), cfg)))
                        }
                        StageOptions::C3dEncode(_) => {
                            let AnyStream::Clips(s) = get(&stage.inputs[0]) else { unreachable!("validated edge") };
                            let cfg = plan.encoders[&stage.name].clone();
                            Some(AnyStream::Features(encode(s.clone(), cfg, stats.clone())))
                        }
                        StageOptions::Hdf5Writer(_) => {
                            let AnyStream::Features(s) = get(&stage.inputs[0]) else { unreachable!("validated edge") };
                            let spool = if index == 0 { plan.spools.lock().unwrap().remove(&stage.name) } else { None };
                            let report = Rc::new(RefCell::new(WriterReport::default()));
                            local_reports.push((stage.name.clone(), report.clone()));
                            let s = s.clone().probe_with(&probe);
                            write_features(s, plan.writers[&stage.name].clone(), spool, stats.clone(), report);
                            None
                        }
                        StageOptions::Evaluate(_) => {
                            let AnyStream::Features(s) = get(&stage.inputs[0]) else { unreachable!("validated edge") };
                            let sink = Rc::new(RefCell::new(BTreeMap::new()));
                            local_collected.push((stage.name.clone(), sink.clone()));
                            let s = s.clone().probe_with(&probe);
                            collect_features(s, plan.graph.run.output_dir.join("errors.jsonl"), stats.clone(), sink);
                            None
                        }
                        _ => unreachable!("checked in prepare"),
                    };
                    if let Some(s) = made {
                        streams.insert(stage.name.clone(), s);
                    }
                }
            });

            if index == 0 {
                let window = (plan.graph.run.max_in_flight * peers) as u64;
                for (t, item) in plan.todo.iter().enumerate() {
                    let t = t as u64;
                    // Back-pressure: wait until the writer has seen every
                    // video older than the window. The park is bounded so
                    // that a stop request is seen while nothing moves.
                    while probe.less_than(&t.saturating_sub(window)) && !super::interrupt::requested(&interrupted) {
                        worker.step_or_park(Some(Duration::from_millis(100)));
                    }
                    if super::interrupt::requested(&interrupted) {
                        tracing::warn!(
                            "interrupted: no new videos are started; finishing those in flight (a second signal aborts at once)"
                        );
                        break;
                    }
                    input.send(item.clone());
                    input.advance_to(t + 1);
                }
            }
            drop(input);
            while worker.step_or_park(None) {}
            if index == 0 {
                let mut out = collected.lock().unwrap();
                for (name, c) in local_collected {
                    out.insert(name, std::mem::take(&mut *c.borrow_mut()));
                }
            }
            let mut out = reports.lock().unwrap();
            for (name, r) in local_reports {
                if let Ok(cell) = Rc::try_unwrap(r) {
                    let r = cell.into_inner();
                    if r.written.is_some() || r.error.is_some() || r.kept_spool.is_some() {
                        out.push((name, r));
                    }
                }
            }
        })?;
        for result in guards.join() {
            result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
        }
    }
    drop(progress);
    let stop_requested = super::interrupt::requested(&interrupted);

    let reports = std::mem::take(&mut *reports.lock().unwrap());
    let mut outputs = BTreeMap::new();
    let mut fatal = None;
    let mut kept = false;
    for (name, r) in reports {
        if let Some(p) = r.kept_spool {
            tracing::warn!(
                "interrupted: {} finished videos are kept in {}; run the same command to resume",
                RunStats::get(&stats.videos_done) + skipped as u64,
                p.display()
            );
            kept = true;
        }
        if let Some(p) = r.written {
            outputs.insert(name.clone(), p.display().to_string());
        }
        if let Some(e) = r.error {
            fatal = Some(format!("writing {name}: {e}"));
        }
    }
    // Metrics over the videos done before an interrupt would describe a
    // subset that nobody asked for.
    if cluster.is_first_process() && !stop_requested {
        for (name, videos) in std::mem::take(&mut *collected.lock().unwrap()) {
            let (opts, model) = &plan.evals[&name];
            let features = videos
                .into_iter()
                .map(|(id, v)| {
                    (id, VideoFeatures { values: v.values, clips: v.clips, dim: v.dim, fps: v.fps, frames: v.frames })
                })
                .collect();
            match super::evaluate::evaluate(opts, model, &features) {
                Ok(result) => {
                    super::evaluate::print_table(&result);
                    outputs.insert(name.clone(), opts.output.display().to_string());
                }
                Err(e) => fatal = Some(format!("evaluating {name}: {e:#}")),
            }
        }
    }
    let videos = VideoCounts {
        total: plan.todo.len() as u64 + skipped as u64 + rejected.len() as u64,
        processed: RunStats::get(&stats.videos_done),
        skipped: skipped as u64,
        failed: RunStats::get(&stats.videos_failed) + rejected.len() as u64,
    };
    let mut summary = RunSummary::new(graph, "extract", cluster, started.elapsed(), videos, &stats, outputs, fatal);
    // On process 0 a writer decides (it skipped assembly; a request that came
    // after the file was written changes nothing); without a writer, or on
    // another process, the request itself does.
    summary.interrupted = kept || (stop_requested && (plan.writers.is_empty() || !cluster.is_first_process()));
    Ok(summary)
}
