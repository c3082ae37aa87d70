//! Encoder operator: clips from any number of videos are packed into
//! batches for a dedicated model thread (GPU or CPU). Every batch has the
//! same shape, padded with blank clips when short, so that a clip's features
//! never depend on which other clips shared its batch: runs with different
//! worker counts or timing give identical values.

use crate::messages::{ClipMsg, FeatureMsg};
use crate::run::{catch_panic, RunShared};
use crate::stats::RunStats;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use locvtp_model::{normalise_u8_clips, Layer, LocVtp, ModelConfig};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Instant;
use tch::{Kind, Tensor};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

#[derive(Debug, Clone)]
pub struct EncodeConfig {
    /// The stage's name in the graph, for messages.
    pub stage: String,
    pub model: ModelConfig,
    pub checkpoint: Option<PathBuf>,
    pub layer: Layer,
    pub device: tch::Device,
    pub batch_size: usize,
    /// Batches queued for the model thread.
    pub queue: usize,
    /// Seed of the initial weights when no checkpoint is given.
    pub seed: i64,
    pub precision: locvtp_model::amp::Precision,
}

impl EncodeConfig {
    pub fn feature_dim(&self) -> usize {
        match self.layer {
            Layer::Projection => self.model.projection_dim as usize,
            Layer::Fc6 => self.model.c3d.fc_dim as usize,
        }
    }

    pub fn clip_bytes(&self) -> usize {
        let s = self.model.frame_size as usize;
        self.model.frames_per_segment as usize * s * s * 3
    }
}

/// Loads the model as the encoder will use it; callers run this once before
/// the dataflow starts so that a bad checkpoint is a configuration error,
/// not a failure in the middle of a run.
pub fn load_encoder(cfg: &EncodeConfig) -> anyhow::Result<LocVtp> {
    let device = cfg.device;
    if device.is_cuda() {
        // Every batch has the same shape, so cuDNN's autotuner pays once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut model = LocVtp::new(&cfg.model, device, cfg.seed);
    match &cfg.checkpoint {
        Some(path) => {
            locvtp_model::checkpoint::load_weights(&mut model.vs, path)?;
        }
        None => {
            static WARN: Once = Once::new();
            WARN.call_once(|| {
                tracing::warn!(
                    "NO CHECKPOINT: the encoder runs with randomly initialised weights (seed {}); features are not meaningful",
                    cfg.seed
                )
            });
        }
    }
    Ok(model)
}

/// Clip keys `(time, video, clip index)` and their pixels.
struct Job {
    tags: Vec<(u64, Arc<str>, u64)>,
    pixels: Vec<u8>,
}

struct Done {
    tags: Vec<(u64, Arc<str>, u64)>,
    values: Vec<f32>,
}

fn run_model(
    cfg: EncodeConfig,
    jobs: Receiver<Job>,
    done: Sender<Result<Done, String>>,
    wake: impl Fn(),
    run: Arc<RunShared>,
) {
    let stats = &run.stats;
    let model = match load_encoder(&cfg) {
        Ok(m) => m,
        Err(e) => {
            let _ = done.send(Err(format!("to load: {e:#}")));
            wake();
            return;
        }
    };
    let s = cfg.model.frame_size;
    let f = cfg.model.frames_per_segment;
    let b = cfg.batch_size as i64;
    let dim = cfg.feature_dim();
    let mut waited = Instant::now();
    for job in jobs {
        RunStats::add(&stats.encoder_wait_ns, waited.elapsed().as_nanos() as u64);
        let busy = Instant::now();
        let n = job.tags.len();
        let mut pixels = job.pixels;
        pixels.resize(cfg.batch_size * cfg.clip_bytes(), 0);
        let computed = catch_panic(|| {
            tch::no_grad(|| {
                let u8s = Tensor::from_slice(&pixels).reshape([b, f, s, s, 3]).to_device(model.device());
                let autocast = cfg.precision.autocast(model.device());
                let (fc6, projected) = locvtp_model::amp::bf16(model.device(), autocast, || {
                    model.encode_clips(&normalise_u8_clips(&u8s), false)
                });
                let out = match cfg.layer {
                    Layer::Projection => projected,
                    Layer::Fc6 => fc6,
                };
                let out = out.narrow(0, 0, n as i64).to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
                let mut v = vec![0f32; n * dim];
                out.copy_data(&mut v, n * dim);
                v
            })
        });
        let values = match computed {
            Ok(values) => values,
            Err(e) => {
                // The model may be left in any state: this thread stops, and
                // the operator fails the run with what went wrong where.
                let _ = done.send(Err(format!("on a batch of {n} clips of {}: {e}", videos_of(&job.tags))));
                wake();
                return;
            }
        };
        RunStats::add(&stats.encoder_busy_ns, busy.elapsed().as_nanos() as u64);
        RunStats::add(&stats.clips_encoded, n as u64);
        RunStats::add(&stats.encoder_batches, 1);
        if done.send(Ok(Done { tags: job.tags, values })).is_err() {
            return;
        }
        wake();
        waited = Instant::now();
    }
}

/// The videos of a batch's clips, in order, for messages.
fn videos_of(tags: &[(u64, Arc<str>, u64)]) -> String {
    const SHOWN: usize = 5;
    let mut videos: Vec<&str> = Vec::new();
    for (_, video, _) in tags {
        if !videos.contains(&&**video) {
            videos.push(video);
        }
    }
    let mut text = videos.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if videos.len() > SHOWN {
        text.push_str(&format!(" and {} more videos", videos.len() - SHOWN));
    }
    text
}

/// Per video time: the capability, clips still being encoded, and the end
/// marker held back until they are out.
struct Pending {
    cap: Capability<u64>,
    in_flight: usize,
    end: Option<FeatureMsg>,
}

pub fn encode<'s>(
    clips: Stream<'s, u64, Vec<ClipMsg>>,
    cfg: EncodeConfig,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<FeatureMsg>> {
    let scope = clips.scope();
    let worker = scope.worker();
    clips.unary_frontier(Pipeline, "Encode", move |_cap, info| {
        let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
        let (job_tx, job_rx) = bounded::<Job>(cfg.queue.max(1));
        let (done_tx, done_rx) = bounded::<Result<Done, String>>(cfg.queue.max(1) + 1);
        {
            let (model_cfg, activator, model_run) = (cfg.clone(), activator.clone(), run.clone());
            let spawned = std::thread::Builder::new()
                .name("encode".into())
                .spawn(move || {
                    run_model(
                        model_cfg,
                        job_rx,
                        done_tx,
                        move || {
                            let _ = activator.activate();
                        },
                        model_run,
                    )
                });
            // Without its thread the operator fails its first batch; this
            // says why.
            if let Err(e) = spawned {
                run.fail(&cfg.stage, format!("cannot start the encoder thread: {e}"));
            }
        }
        let dim = cfg.feature_dim();
        let batch_size = cfg.batch_size.max(1);
        let clip_bytes = cfg.clip_bytes();
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        let mut batch = Job { tags: Vec::new(), pixels: Vec::new() };
        let mut ready: VecDeque<Job> = VecDeque::new();
        let mut batches_in_flight = 0usize;
        let mut failed = false;

        move |(input, frontier), output| {
            if failed {
                // The run is stopping; what still arrives is dropped so that
                // the dataflow can drain.
                input.for_each(|_, _| {});
                return;
            }
            input.for_each(|cap, data| {
                let t = *cap.least().expect("extraction times are totally ordered");
                for msg in data.drain(..) {
                    match msg {
                        ClipMsg::Clip { video, index, pixels } => {
                            if pixels.len() != clip_bytes {
                                failed = true;
                                run.fail(
                                    &cfg.stage,
                                    format!(
                                        "a clip of {video} has {} bytes but the model takes {clip_bytes} (frame size or clip length differ from the model config)",
                                        pixels.len()
                                    ),
                                );
                                return;
                            }
                            let p = pending.entry(t).or_insert_with(|| Pending {
                                cap: cap.retain_least(0).expect("totally ordered"),
                                in_flight: 0,
                                end: None,
                            });
                            p.in_flight += 1;
                            batch.tags.push((t, video, index));
                            batch.pixels.extend_from_slice(&pixels);
                            if batch.tags.len() == batch_size {
                                ready.push_back(std::mem::replace(
                                    &mut batch,
                                    Job { tags: Vec::new(), pixels: Vec::new() },
                                ));
                            }
                        }
                        ClipMsg::End { video, clips, frames, fps } => {
                            let end = FeatureMsg::End { video, clips, frames, fps };
                            match pending.get_mut(&t) {
                                Some(p) => p.end = Some(end),
                                None => output.session(&cap).give(end),
                            }
                        }
                        ClipMsg::Failed(e) => output.session(&cap).give(FeatureMsg::Failed(e)),
                    }
                }
            });

            if failed {
                pending.clear();
                return;
            }
            loop {
                let done = match done_rx.try_recv() {
                    Ok(Ok(done)) => done,
                    Ok(Err(e)) => {
                        run.fail(&cfg.stage, format!("the encoder failed {e}"));
                        failed = true;
                        pending.clear();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    // The model thread only ends early after sending why;
                    // without a message it died, and its batches never come.
                    Err(TryRecvError::Disconnected) if batches_in_flight > 0 => {
                        run.fail(
                            &cfg.stage,
                            format!("the encoder thread stopped with {batches_in_flight} batches unfinished"),
                        );
                        failed = true;
                        pending.clear();
                        return;
                    }
                    Err(TryRecvError::Disconnected) => break,
                };
                batches_in_flight -= 1;
                for (i, (t, video, index)) in done.tags.into_iter().enumerate() {
                    let p = pending.get_mut(&t).expect("pending entry for every clip in flight");
                    let values = done.values[i * dim..(i + 1) * dim].to_vec();
                    output.session(&p.cap).give(FeatureMsg::Feature { video, index, values });
                    p.in_flight -= 1;
                }
            }
            pending.retain(|_, p| {
                if p.in_flight > 0 {
                    return true;
                }
                if let Some(end) = p.end.take() {
                    output.session(&p.cap).give(end);
                }
                // More clips of this video may still arrive with their own
                // capability; nothing needs this one any more.
                false
            });

            // A partial batch is padded to full size, so it costs the model a
            // whole batch: it waits for more clips while more can come. It
            // goes out once every video in it has delivered all its clips
            // (the frontier has passed their times) and the model is idle,
            // which also keeps the run's in-flight window from waiting on
            // clips held here.
            let complete = |t: &u64| !frontier.less_equal(t);
            if !batch.tags.is_empty()
                && ready.is_empty()
                && (frontier.is_empty() || (batches_in_flight == 0 && batch.tags.iter().all(|(t, _, _)| complete(t))))
            {
                ready.push_back(std::mem::replace(&mut batch, Job { tags: Vec::new(), pixels: Vec::new() }));
            }
            while let Some(job) = ready.pop_front() {
                match job_tx.try_send(job) {
                    Ok(()) => batches_in_flight += 1,
                    Err(TrySendError::Full(job)) => {
                        ready.push_front(job);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        let why = match done_rx.recv() {
                            Ok(Err(e)) => format!("the encoder failed {e}"),
                            _ => "the encoder thread stopped".to_string(),
                        };
                        run.fail(&cfg.stage, why);
                        failed = true;
                        pending.clear();
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::{Capture, ToStream};

    /// The tiny test model on the CPU, with clips of `frames` frames.
    fn config(frames: i64) -> EncodeConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/c3d-tiny.toml");
        let mut model = ModelConfig::from_toml_file(&path).unwrap();
        model.frames_per_segment = frames;
        EncodeConfig {
            stage: "encode".into(),
            model,
            checkpoint: None,
            layer: Layer::Projection,
            device: tch::Device::Cpu,
            batch_size: 2,
            queue: 1,
            seed: 0,
            precision: locvtp_model::amp::Precision::Fp32,
        }
    }

    /// Three clips of two videos through the encoder: its features, and
    /// the run's failure if any.
    fn encode_three(cfg: EncodeConfig) -> (Vec<FeatureMsg>, Option<crate::FatalError>) {
        let run = Arc::new(RunShared::default());
        let clip_bytes = cfg.clip_bytes();
        let shared = run.clone();
        let captured = timely::example(move |scope| {
            let clips = [("a", 0), ("a", 1), ("b", 0)].map(|(video, index)| ClipMsg::Clip {
                video: video.into(),
                index,
                pixels: vec![128; clip_bytes],
            });
            encode(clips.to_stream(scope), cfg, shared).capture()
        });
        let features = captured
            .try_iter()
            .flat_map(|event| match event {
                timely::dataflow::operators::capture::Event::Messages(_, data) => data,
                timely::dataflow::operators::capture::Event::Progress(_) => Vec::new(),
            })
            .collect();
        (features, run.fatal())
    }

    #[test]
    fn a_model_error_fails_the_run_naming_the_batch_and_the_dataflow_ends() {
        // The tiny model takes 8-frame clips to a time extent of zero at
        // pool5: libtorch refuses the batch (tch panics), well after the
        // model loaded.
        let (features, fatal) = encode_three(config(8));
        let fatal = fatal.expect("the model's error fails the run");
        assert_eq!(fatal.stage, "encode");
        assert!(fatal.message.starts_with("the encoder failed on a batch of 2 clips of a: "), "{fatal}");
        assert!(fatal.message.ends_with("Output size is too small"), "{fatal}");
        assert!(!fatal.message.contains('\n'), "{fatal}");
        assert!(features.is_empty(), "{features:?}");

        let (features, fatal) = encode_three(config(16));
        assert_eq!(fatal, None);
        assert_eq!(features.len(), 3);
    }
}
