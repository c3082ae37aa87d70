//! Downstream temporal grounding: training a 2D-TAN style model on
//! extracted clip features and the grounding annotations of a dataset's
//! train split, choosing the epoch on its validation split, and ranking the
//! moments of its test split with the chosen weights.
//!
//! The model is small next to the data path, so one worker (worker 0)
//! trains it, on a thread of its own: [`fit`] is a plain function of the
//! samples, and the operator only gathers the samples and passes the
//! thread's events on, at the times of the steps they belong to.

use crate::run::RunShared;
use crate::samples::StepInfo;
use crate::train::{Snapshot, SnapshotReason, StepReport, TrainEvent};
use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, TryRecvError};
use locvtp_model::moments::{as_fraction, score, Moment, Predictions, Ranked};
use locvtp_model::tan::{clip_grad_norm, resample, Tan, TanConfig};
use locvtp_model::text::TextEncoder;
use locvtp_model::train::{load_training_state, zero_gradients, Adam, TrainMeta, TrainingSnapshot};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

/// Which part of a grounding dataset a query belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroundingSplit {
    /// Trains the model and teaches the best fixed window.
    Train,
    /// Chooses the epoch; nothing else.
    Val,
    /// Reported; never looked at before the end.
    Test,
}

impl GroundingSplit {
    pub fn name(self) -> &'static str {
        match self {
            GroundingSplit::Train => "train",
            GroundingSplit::Val => "val",
            GroundingSplit::Test => "test",
        }
    }
}

/// One video's clip features as extracted, row-major `[clips, dim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipFeatures {
    pub values: Vec<f32>,
    pub clips: usize,
    pub dim: usize,
}

/// One grounding query with its video's features.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroundingSample {
    pub split: GroundingSplit,
    pub video_id: Arc<str>,
    pub sentence: String,
    /// The annotated moment, fitted to the video, in seconds.
    pub start_s: f64,
    pub end_s: f64,
    pub duration_s: f64,
    pub features: Arc<ClipFeatures>,
}

/// One query's ranked moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedQuery {
    pub video_id: String,
    pub sentence: String,
    #[serde(flatten)]
    pub ranked: Ranked,
}

/// What the evaluation needs besides the predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroundingSetup {
    pub model: TanConfig,
    /// Train, val and test queries.
    pub queries: BTreeMap<String, usize>,
    /// Distinct videos per split.
    pub videos: BTreeMap<String, usize>,
    /// Every training truth as fractions of its video: what the best fixed
    /// window is learned from.
    pub train_truths: Vec<Moment>,
    /// The metric the epoch is chosen by, on the validation split.
    pub select_on: String,
    /// libtorch's intra-op threads during training.
    pub threads: usize,
    /// Validation points ([`curve_point`]) of the epochs a resumed run
    /// trained before this one, from its checkpoint.
    #[serde(default)]
    pub earlier_curve: Vec<serde_json::Value>,
}

/// What the grounding trainer reports besides steps and snapshots.
#[derive(Debug, Clone)]
pub enum GroundingEvent {
    /// Once, before the first step.
    Setup(Box<GroundingSetup>),
    /// After each epoch: the validation queries' ranked moments.
    Validation { epoch: u32, queries: Vec<RankedQuery> },
    /// At the end: the test queries' ranked moments with the weights of
    /// `epoch` (1-based), chosen on validation.
    Test { epoch: u32, queries: Vec<RankedQuery> },
}

/// How the grounding trainer runs.
#[derive(Debug, Clone)]
pub struct GroundingTrainConfig {
    /// The stage's name, for messages.
    pub stage: String,
    /// Its feature width is checked against the samples.
    pub model: TanConfig,
    pub text_encoder: PathBuf,
    pub device: Device,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Gradients are scaled to at most this joint norm.
    pub grad_clip: f64,
    /// libtorch's intra-op threads: fixed, since the sums of a matrix
    /// product depend on how many threads split them.
    pub threads: usize,
    /// `R@n_IoUm` or `mIoU` on the validation split.
    pub select_on: String,
    /// `last.safetensors` of an earlier run to continue from.
    pub resume: Option<PathBuf>,
    /// Where the checkpoints sink writes (`epoch-NNN.safetensors`): a
    /// resumed run reloads the chosen epoch's weights from it.
    pub checkpoints_dir: Option<PathBuf>,
    /// Whether a checkpoints sink wants the training state.
    pub snapshots: bool,
}

impl GroundingTrainConfig {
    /// The model configuration as stored in checkpoints.
    pub fn model_json(&self) -> String {
        serde_json::to_string(&self.model).expect("plain data")
    }
}

/// Gathers every sample on worker 0 and trains there on a thread of its
/// own once the input is complete; emits each step's report at its step,
/// snapshots for the checkpoints sink, and the ranked validation and test
/// queries.
pub fn train_grounding<'s>(
    samples: Stream<'s, u64, Vec<GroundingSample>>,
    cfg: GroundingTrainConfig,
    run: Arc<RunShared>,
) -> Stream<'s, u64, Vec<TrainEvent>> {
    let scope = samples.scope();
    let worker = scope.worker();
    let first = scope.index() == 0;
    samples.unary_frontier::<CapacityContainerBuilder<Vec<TrainEvent>>, _, _, _>(
        Exchange::new(|_: &GroundingSample| 0),
        "TrainGrounding",
        move |cap, info| {
            let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
            let mut cap = first.then_some(cap);
            let mut gathered: Vec<GroundingSample> = Vec::new();
            let mut events: Option<Receiver<(u64, TrainEvent)>> = None;
            let mut cfg = Some(cfg);
            move |(input, frontier), output| {
                input.for_each(|_cap, data| gathered.append(data));
                if !frontier.is_empty() || cap.is_none() {
                    return;
                }
                if let Some(cfg) = cfg.take() {
                    let (tx, rx) = bounded::<(u64, TrainEvent)>(16);
                    let (samples, shared, activator) = (std::mem::take(&mut gathered), run.clone(), activator.clone());
                    let stage = cfg.stage.clone();
                    let spawned = std::thread::Builder::new().name("grounding".into()).spawn(move || {
                        let send = |t: u64, e: TrainEvent| {
                            let ok = tx.send((t, e)).is_ok();
                            let _ = activator.activate();
                            ok
                        };
                        if let Err(e) = fit(samples, &cfg, &shared, send) {
                            shared.fail(&cfg.stage, format!("{e:#}"));
                        }
                        drop(tx);
                        let _ = activator.activate();
                    });
                    match spawned {
                        Ok(_) => events = Some(rx),
                        Err(e) => {
                            run.fail(&stage, format!("cannot start the training thread: {e}"));
                            cap = None;
                            return;
                        }
                    }
                }
                let Some(rx) = &events else { return };
                loop {
                    match rx.try_recv() {
                        Ok((t, event)) => {
                            let held = cap.as_mut().expect("held until the thread ends");
                            if *held.time() < t {
                                held.downgrade(&t);
                            }
                            output.session(&*held).give(event);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            cap = None;
                            break;
                        }
                    }
                }
            }
        },
    )
}

/// Features and sentences of the queries of one split, on the device.
struct Split {
    /// `[Q, M, D]` is too large for long datasets; rows of `videos` per
    /// query instead.
    video_row: Vec<i64>,
    sentences: Tensor,
    samples: Vec<GroundingSample>,
}

/// Everything [`fit`] prepares once.
struct Data {
    /// `[V, M, D]`: every video resampled once.
    videos: Tensor,
    train: Split,
    val: Split,
    test: Split,
    /// `[Q_train, N, N]` scaled IoU targets.
    targets: Tensor,
}

fn prepare_data(samples: Vec<GroundingSample>, cfg: &GroundingTrainConfig) -> Result<Data> {
    let m = cfg.model.sample_clips as usize;
    let mut rows: HashMap<Arc<str>, i64> = HashMap::new();
    let mut videos = Vec::new();
    for s in &samples {
        let f = &s.features;
        if f.dim as i64 != cfg.model.feature_dim {
            bail!("video {}: features of width {}, the model takes {}", s.video_id, f.dim, cfg.model.feature_dim);
        }
        if f.clips == 0 {
            bail!("video {}: no clip features", s.video_id);
        }
        if !rows.contains_key(&s.video_id) {
            rows.insert(s.video_id.clone(), videos.len() as i64);
            videos.push(resample(&f.values, f.clips, f.dim, m));
        }
    }
    let text = TextEncoder::load(&cfg.text_encoder, cfg.device)
        .with_context(|| format!("text encoder {}", cfg.text_encoder.display()))?;
    if text.hidden_size() != cfg.model.text_dim {
        bail!("the text encoder's width is {}, the model takes {}", text.hidden_size(), cfg.model.text_dim);
    }
    let mut by_split: BTreeMap<GroundingSplit, Vec<GroundingSample>> = BTreeMap::new();
    for s in samples {
        by_split.entry(s.split).or_default().push(s);
    }
    let mut split = |which: GroundingSplit| -> Result<Split> {
        let samples = by_split.remove(&which).unwrap_or_default();
        let mut parts = Vec::new();
        for chunk in samples.chunks(64) {
            let refs: Vec<&str> = chunk.iter().map(|s| s.sentence.as_str()).collect();
            parts.push(text.encode(&refs)?.sentence);
        }
        let sentences = if parts.is_empty() {
            Tensor::zeros([0, cfg.model.text_dim], (Kind::Float, cfg.device))
        } else {
            Tensor::cat(&parts, 0)
        };
        let video_row = samples.iter().map(|s| rows[&s.video_id]).collect();
        Ok(Split { video_row, sentences, samples })
    };
    let (train, val, test) = (split(GroundingSplit::Train)?, split(GroundingSplit::Val)?, split(GroundingSplit::Test)?);
    if train.samples.is_empty() {
        bail!("no training query: the train split is empty or none of its videos has features");
    }
    if test.samples.is_empty() {
        bail!("no test query: the test split is empty or none of its videos has features");
    }
    let n = cfg.model.clips;
    let targets: Vec<Tensor> = train
        .samples
        .iter()
        .map(|s| Tensor::from_slice(&cfg.model.target_map((s.start_s, s.end_s), s.duration_s)).view([n, n]))
        .collect();
    Ok(Data {
        videos: Tensor::stack(&videos, 0).to_device(cfg.device),
        targets: Tensor::stack(&targets, 0).to_device(cfg.device),
        train,
        val,
        test,
    })
}

/// Ranked moments of every query of `split`, in batches, without gradient.
fn rank_split(model: &Tan, data: &Data, split: &Split, batch: usize) -> Vec<RankedQuery> {
    let mut out = Vec::with_capacity(split.samples.len());
    tch::no_grad(|| {
        for (k, chunk) in split.samples.chunks(batch.max(1)).enumerate() {
            let from = (k * batch.max(1)) as i64;
            let idx = Tensor::from_slice(&split.video_row[from as usize..from as usize + chunk.len()]);
            let video = data.videos.index_select(0, &idx.to_device(data.videos.device()));
            let sentence = split.sentences.narrow(0, from, chunk.len() as i64);
            let logits = model.forward(&video, &sentence);
            let durations: Vec<f64> = chunk.iter().map(|s| s.duration_s).collect();
            for (s, moments) in chunk.iter().zip(model.rank(&logits, &durations, 5)) {
                out.push(RankedQuery {
                    video_id: s.video_id.to_string(),
                    sentence: s.sentence.clone(),
                    ranked: Ranked { truth: (s.start_s, s.end_s), duration: s.duration_s, moments },
                });
            }
        }
    });
    out
}

/// The value of metric `key` (`R@n_IoUm` or `mIoU`) over ranked queries.
pub fn metric(queries: &[RankedQuery], key: &str, thresholds: &[f64]) -> f64 {
    let ranked: Vec<Ranked> = queries.iter().map(|q| q.ranked.clone()).collect();
    score(&Predictions(&ranked), ranked.len(), &[1, 5], thresholds, 0)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, e)| e.value)
        .unwrap_or(f64::NAN)
}

/// Recalls reported: R@1 and R@5, as 2D-TAN reports.
pub const RECALLS: [usize; 2] = [1, 5];

/// One epoch's validation numbers: every recall and mean IoU.
pub fn curve_point(epoch: u32, queries: &[RankedQuery], thresholds: &[f64]) -> serde_json::Value {
    let mut point = serde_json::json!({ "epoch": epoch });
    let keys = RECALLS
        .iter()
        .flat_map(|&n| thresholds.iter().map(move |&m| locvtp_model::moments::recall_key(n, m)))
        .chain(["mIoU".to_string()]);
    for k in keys {
        point[k.as_str()] = serde_json::json!(metric(queries, &k, thresholds));
    }
    point
}

/// Copies of the variables' values, by name.
fn copy_weights(model: &Tan) -> Vec<(String, Tensor)> {
    tch::no_grad(|| model.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect())
}

fn restore_weights(model: &Tan, weights: &[(String, Tensor)]) {
    let vars = model.vs.variables();
    tch::no_grad(|| {
        for (name, value) in weights {
            let mut v = vars[name].shallow_clone();
            v.copy_(value);
        }
    });
}

/// The order of the training queries in `epoch`: a function of the seed
/// and the epoch alone, so that a resumed run sees the same batches.
fn epoch_order(queries: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..queries).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    order
}

/// Trains on the train split, evaluates the validation split after every
/// epoch, keeps the weights of the best epoch by `cfg.select_on` (the last
/// epoch when there is no validation query) and ranks the test split with
/// them at the end. `send(time, event)` hands each event to the dataflow;
/// it returns false once nobody listens.
pub fn fit(
    samples: Vec<GroundingSample>,
    cfg: &GroundingTrainConfig,
    run: &RunShared,
    mut send: impl FnMut(u64, TrainEvent) -> bool,
) -> Result<()> {
    tch::set_num_threads(cfg.threads.max(1) as i32);
    let data = prepare_data(samples, cfg)?;
    let mut model = Tan::new(&cfg.model, cfg.device, cfg.seed as i64)?;
    let model_json = cfg.model_json();
    let batch = cfg.batch_size.max(1);
    let n_train = data.train.samples.len();
    let steps_per_epoch = n_train.div_ceil(batch) as u64;
    let steps_total = steps_per_epoch * cfg.epochs as u64;
    let thresholds = cfg.model.thresholds.clone();

    let mut curve: Vec<serde_json::Value> = Vec::new();
    let (mut adam, mut step, mut best): (Adam, u64, Option<(u32, f64)>) = match &cfg.resume {
        Some(path) => {
            let (adam, meta) = load_training_state(path, &mut model.vs, &model_json)?;
            let best = match (meta.extra.get("best_epoch"), meta.extra.get("best_value")) {
                (Some(e), Some(v)) => Some((e.parse()?, v.parse()?)),
                _ => None,
            };
            if let Some(text) = meta.extra.get("val_curve") {
                curve = serde_json::from_str(text).with_context(|| format!("{}: val_curve", path.display()))?;
            }
            tracing::info!("resuming grounding from {} (epoch {}, step {})", path.display(), meta.epoch, meta.step);
            (adam, meta.step as u64, best)
        }
        None => (Adam::new(&model.vs), 0, None),
    };
    // The chosen epoch's weights: in memory as training goes, or, after a
    // resume, from its checkpoint.
    let mut best_weights: Option<Vec<(String, Tensor)>> = None;
    if let (Some((epoch, _)), true) = (best, cfg.resume.is_some()) {
        let dir = cfg.checkpoints_dir.as_ref().context("resuming needs the checkpoints folder")?;
        let path = dir.join(format!("epoch-{epoch:03}.safetensors"));
        let mut chosen = Tan::new(&cfg.model, cfg.device, cfg.seed as i64)?;
        locvtp_model::checkpoint::load_weights(&mut chosen.vs, &path)
            .with_context(|| format!("the weights of epoch {epoch}, chosen on validation"))?;
        best_weights = Some(copy_weights(&chosen));
    }

    let counts = |f: fn(&Split) -> usize| -> BTreeMap<String, usize> {
        [("train", &data.train), ("val", &data.val), ("test", &data.test)]
            .into_iter()
            .map(|(k, s)| (k.to_string(), f(s)))
            .collect()
    };
    let setup = GroundingSetup {
        model: cfg.model.clone(),
        queries: counts(|s| s.samples.len()),
        videos: counts(|s| s.samples.iter().map(|q| &q.video_id).collect::<std::collections::HashSet<_>>().len()),
        train_truths: data.train.samples.iter().map(|s| as_fraction((s.start_s, s.end_s), s.duration_s)).collect(),
        select_on: cfg.select_on.clone(),
        threads: cfg.threads,
        earlier_curve: curve.clone(),
    };
    if !send(step, TrainEvent::Grounding(Arc::new(GroundingEvent::Setup(Box::new(setup))))) {
        return Ok(());
    }

    let meta_extra = |best: Option<(u32, f64)>, curve: &[serde_json::Value]| -> BTreeMap<String, String> {
        let mut extra = BTreeMap::from([
            ("task".to_string(), "grounding".to_string()),
            ("select_on".to_string(), cfg.select_on.clone()),
            ("lr".to_string(), cfg.lr.to_string()),
            ("batch_size".to_string(), batch.to_string()),
            ("threads".to_string(), cfg.threads.to_string()),
        ]);
        if let Some((e, v)) = best {
            extra.insert("best_epoch".into(), e.to_string());
            extra.insert("best_value".into(), v.to_string());
        }
        extra.insert("val_curve".into(), serde_json::Value::from(curve.to_vec()).to_string());
        extra
    };
    let snapshot =
        |model: &Tan, adam: &Adam, at: StepInfo, reason, best, curve: &[serde_json::Value]| -> Result<TrainEvent> {
            let meta = TrainMeta {
                epoch: i64::from(at.epoch) + i64::from(at.epoch_end),
                step: at.step as i64 + 1,
                seed: cfg.seed,
                extra: meta_extra(best, curve),
            };
            let state = TrainingSnapshot::take_store(&model.vs, &model_json, adam, &meta)?;
            Ok(TrainEvent::Snapshot(Arc::new(Snapshot { at, reason, state })))
        };

    while step < steps_total {
        let epoch = (step / steps_per_epoch) as u32;
        let order = epoch_order(n_train, cfg.seed, u64::from(epoch));
        let position = (step % steps_per_epoch) as usize;
        let began = Instant::now();
        let chosen = &order[position * batch..((position + 1) * batch).min(n_train)];
        let idx = Tensor::from_slice(&chosen.iter().map(|&q| q as i64).collect::<Vec<_>>()).to_device(cfg.device);
        let rows: Vec<i64> = chosen.iter().map(|&q| data.train.video_row[q]).collect();
        let video = data.videos.index_select(0, &Tensor::from_slice(&rows).to_device(cfg.device));
        let sentence = data.train.sentences.index_select(0, &idx);
        let targets = data.targets.index_select(0, &idx);
        let loss = model.loss(&model.forward(&video, &sentence), &targets);
        loss.backward();
        clip_grad_norm(&model.vs, cfg.grad_clip);
        adam.step(&model.vs, cfg.lr);
        zero_gradients(&model.vs);
        let loss = loss.double_value(&[]);
        if !loss.is_finite() {
            bail!("step {}: the loss is {loss}", step + 1);
        }
        let epoch_end = (step + 1) % steps_per_epoch == 0;
        let at = StepInfo { step, epoch, epoch_end, steps_total };
        let mut terms = vec![("total".to_string(), loss)];
        let mut events = Vec::new();
        if epoch_end {
            let ranked = rank_split(&model, &data, &data.val, batch);
            if !ranked.is_empty() {
                let value = metric(&ranked, &cfg.select_on, &thresholds);
                terms.push((format!("val_{}", cfg.select_on), value));
                if cfg.select_on != "mIoU" {
                    terms.push(("val_mIoU".into(), metric(&ranked, "mIoU", &thresholds)));
                }
                // Ties keep the earlier epoch: no reason to prefer more training.
                if best.is_none_or(|(_, b)| value > b) {
                    best = Some((epoch + 1, value));
                    best_weights = Some(copy_weights(&model));
                }
                curve.push(curve_point(epoch + 1, &ranked, &thresholds));
                events.push(TrainEvent::Grounding(Arc::new(GroundingEvent::Validation {
                    epoch: epoch + 1,
                    queries: ranked,
                })));
            }
        }
        let report = StepReport {
            at,
            lr: cfg.lr,
            samples: chosen.len() as u32,
            terms,
            samples_per_s: chosen.len() as f64 / began.elapsed().as_secs_f64().max(1e-9),
            data_wait_share: 0.0,
            text_encoder_forwards: 0,
            worker: 0,
            checksum: Vec::new(),
        };
        crate::stats::RunStats::add(&run.stats.train_steps, 1);
        let mut out = vec![TrainEvent::Step(report)];
        out.extend(events);
        let stopping = run.stopping() && step + 1 < steps_total;
        if cfg.snapshots && (epoch_end || stopping) {
            let reason = if epoch_end { SnapshotReason::EpochEnd } else { SnapshotReason::Stop };
            out.push(snapshot(&model, &adam, at, reason, best, &curve)?);
        }
        for event in out {
            if !send(step, event) {
                return Ok(());
            }
        }
        step += 1;
        if stopping {
            run.mark_cut_short();
            return Ok(());
        }
    }

    // No validation split: the last epoch's weights.
    let epoch = match (best, best_weights) {
        (Some((epoch, _)), Some(weights)) => {
            restore_weights(&model, &weights);
            epoch
        }
        _ => cfg.epochs as u32,
    };
    let queries = rank_split(&model, &data, &data.test, batch);
    send(steps_total, TrainEvent::Grounding(Arc::new(GroundingEvent::Test { epoch, queries })));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_shuffled_per_epoch_and_reproducible() {
        let a = epoch_order(50, 7, 0);
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        assert_ne!(a, epoch_order(50, 8, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
