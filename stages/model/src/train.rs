//! Optimisation (locvtp-method.md section 4): the training forward pass,
//! Adam with PyTorch's arithmetic, MultiStepLR, and training checkpoints
//! that carry the optimiser state next to the weights.
//!
//! The step is split into a flat gradient ([`GradientLayout::flatten`]) and
//! [`Adam::step_flat`] so that data-parallel workers can average their
//! gradients in between and then all take the same step.

use crate::checkpoint;
use crate::loss::{locvtp_losses, splice_samples, Draws, LossInputs, LossTerms, LossWeights};
use crate::text::TextBatch;
use crate::{normalise_u8_clips, LocVtp, ModelConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// Anything whose trainable variables live in one `VarStore`.
pub trait Parameters {
    fn var_store(&self) -> &nn::VarStore;
}

impl Parameters for LocVtp {
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

impl Parameters for nn::VarStore {
    fn var_store(&self) -> &nn::VarStore {
        self
    }
}

/// The variables in the fixed order every gradient list uses: by name.
fn sorted_variables(model: &impl Parameters) -> Vec<(String, Tensor)> {
    checkpoint::named_variables(model.var_store())
}

/// Names of the trained variables in gradient-list order.
pub fn parameter_names(model: &impl Parameters) -> Vec<String> {
    sorted_variables(model).into_iter().map(|(n, _)| n).collect()
}

/// The training losses of one batch with dropout active; see
/// [`forward_losses_t`].
pub fn forward_losses(
    model: &LocVtp,
    clips: &Tensor,
    text: &TextBatch,
    draws: &Draws,
    weights: &LossWeights,
) -> LossTerms {
    forward_losses_t(model, clips, text, draws, weights, true)
}

/// The six losses of one batch. `clips` are u8 frames `[B, T, F, H, W, 3]`
/// on any device (moved to the model's device before normalising); `text`
/// the frozen encoder's output for the B captions; `train` switches the
/// projection heads' dropout.
///
/// Each segment is encoded on its own (`[B*T, 3, F, H, W]` to `[B, T, fc]`).
/// A spliced sample consists of segments of the batch, and C3D sees each
/// segment alone with neither dropout nor batch statistics, so C3D of a
/// spliced sample equals the splice of the segments' fc6 features: V' is
/// computed from spliced fc6 features through the video projection (with
/// its own dropout draw), which is the method's "encode through C3D and the
/// video projection" at half the C3D cost, gradients included.
pub fn forward_losses_t(
    model: &LocVtp,
    clips: &Tensor,
    text: &TextBatch,
    draws: &Draws,
    weights: &LossWeights,
    train: bool,
) -> LossTerms {
    let size = clips.size();
    assert!(size.len() == 6 && size[5] == 3, "clips must be u8 [B, T, F, H, W, 3], got {size:?}");
    assert_eq!(clips.kind(), Kind::Uint8, "clips must stay u8 until the model's device");
    let (b, t) = (size[0], size[1]);
    assert_eq!(t, model.cfg.num_segments, "the splice predictor was built for T = {}", model.cfg.num_segments);
    assert_eq!(text.sentence.size()[0], b, "one caption per sample");
    let dev = model.device();

    let segments = clips.to_device(dev).reshape([b * t, size[2], size[3], size[4], 3]);
    // The draws go to the device before any work is queued: a copy from host
    // memory waits for everything queued before it, and made inside the
    // losses each copy would stall the step behind C3D's forward pass (7% of
    // an fp32 and 18% of a bf16 step on an H100). Their values are checked
    // here, on the host; on the device only shapes are.
    if let Err(e) = draws.check(b, t, text.words.size()[1]) {
        panic!("draws do not fit the batch: {e}");
    }
    let draws = &draws.to_device(dev);
    let fc6 = model.c3d.forward_fc6(&normalise_u8_clips(&segments)).reshape([b, t, -1]);
    let v = model.vid_proj.forward_t(&fc6, train);
    let v_spliced = model.vid_proj.forward_t(&splice_samples(&fc6, draws), train);
    let s = model.text_proj.forward_t(&text.sentence.to_device(dev), train);
    let w = model.text_proj.forward_t(&text.words.to_device(dev), train);
    let word_mask = text.word_mask.to_device(dev);
    let inputs = LossInputs { v: &v, s: &s, w: &w, word_mask: &word_mask, v_spliced: &v_spliced };
    locvtp_losses((&model.splice, &model.context), &inputs, draws, weights)
}

/// Copies of the current gradients, one per variable in
/// [`parameter_names`] order. A variable the loss did not reach (C3D's fc7
/// and fc8) gets zeros, so every worker's list has the same shapes.
pub fn gradients(model: &impl Parameters) -> Vec<Tensor> {
    sorted_variables(model)
        .into_iter()
        .map(|(_, v)| {
            let g = v.grad();
            if g.defined() {
                g.detach().copy()
            } else {
                v.zeros_like()
            }
        })
        .collect()
}

/// Parameters that exist in the checkpoint but that no loss reaches (C3D's
/// Sports-1M head): their gradient is always zero, so it never travels
/// between workers, and Adam leaves them exactly as they are.
const NEVER_TRAINED: [&str; 2] = ["videoEncoder.embednet.fc7.", "videoEncoder.embednet.fc8."];

/// The parameters that receive gradients, in a fixed order, and where each
/// lies in a flat gradient vector: what data-parallel workers exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientLayout {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    /// Start of each parameter in the flat vector.
    pub offsets: Vec<usize>,
    /// Length of the flat vector.
    pub total: usize,
}

impl GradientLayout {
    /// Every trainable variable of `model` a loss can reach, by name.
    pub fn of(model: &impl Parameters) -> GradientLayout {
        let mut layout = GradientLayout { names: Vec::new(), shapes: Vec::new(), offsets: Vec::new(), total: 0 };
        for (name, v) in sorted_variables(model) {
            if NEVER_TRAINED.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let shape = v.size();
            layout.offsets.push(layout.total);
            layout.total += shape.iter().product::<i64>() as usize;
            layout.names.push(name);
            layout.shapes.push(shape);
        }
        layout
    }

    /// The current gradients times `scale`, as one f32 vector on the CPU
    /// (zeros where a variable has none).
    pub fn flatten(&self, model: &impl Parameters, scale: f64) -> Vec<f32> {
        let vars = model.var_store().variables();
        let parts: Vec<Tensor> = self
            .names
            .iter()
            .map(|n| {
                let v = &vars[n];
                let g = v.grad();
                let g = if g.defined() { g.detach() } else { v.zeros_like() };
                g.flatten(0, -1).to_kind(Kind::Float)
            })
            .collect();
        let flat = (Tensor::cat(&parts, 0) * scale).to_device(tch::Device::Cpu).contiguous();
        let mut out = vec![0f32; self.total];
        flat.copy_data(&mut out, self.total);
        out
    }
}

/// Zeroes every gradient (keeping the tensors), as `optimizer.zero_grad()`
/// with `set_to_none=False`.
pub fn zero_gradients(model: &impl Parameters) {
    for (_, mut v) in sorted_variables(model) {
        v.zero_grad();
    }
}

/// Adam's hyper-parameters; PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// The arithmetic of one Adam step, with its coefficients fixed.
struct AdamUpdate {
    beta1: f64,
    beta2: f64,
    eps: f64,
    step_size: f64,
    bias_correction2_sqrt: f64,
}

impl AdamUpdate {
    /// Updates `params` and the moments (same-length slices) in place from
    /// the gradient `g`.
    fn apply(&self, params: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, g: &Tensor) {
        let (mut params, mut exp_avg, mut exp_avg_sq) =
            (params.shallow_clone(), exp_avg.shallow_clone(), exp_avg_sq.shallow_clone());
        let _ = exp_avg.lerp_(g, 1.0 - self.beta1);
        let _ = exp_avg_sq.g_mul_scalar_(self.beta2);
        let _ = exp_avg_sq.addcmul_(&(g * (1.0 - self.beta2)), g);
        let denom = exp_avg_sq.sqrt() / self.bias_correction2_sqrt + self.eps;
        let _ = params.g_add_(&(exp_avg.divide(&denom) * (-self.step_size)));
    }
}

/// A CPU tensor that views `values` without copying them.
fn view_of(values: &[f32]) -> Tensor {
    let len = i64::try_from(values.len()).expect("a length fits i64");
    // SAFETY: the tensor views `values` (contiguous f32, `len` of them) and
    // is only read; every caller drops it before `values` goes out of
    // scope (none stores it).
    unsafe { Tensor::from_blob(values.as_ptr().cast(), &[len], &[1], Kind::Float, tch::Device::Cpu) }
}

/// Adam with `torch.optim.Adam`'s arithmetic (no weight decay, no amsgrad).
///
/// The parameters that can get a gradient ([`GradientLayout`]) live in one
/// flat buffer: each model variable is a view of its slice, so a step is a
/// handful of kernels over the buffer whatever the number of parameters
/// (one launch each on a GPU, instead of several per parameter), and the
/// moments are flat buffers too. A variable without gradient is treated as
/// having a zero gradient: its moments stay zero and its update is exactly
/// zero, so its weights stay where PyTorch (which skips such parameters)
/// leaves them. Parameters that never get a gradient (C3D's fc7/fc8) are
/// left out of the buffers and keep zero moments in checkpoints.
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    layout: GradientLayout,
    /// Every variable, by name, with its shape: the checkpoint layout.
    all: Vec<(String, Vec<i64>)>,
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
}

impl Adam {
    pub fn new(model: &impl Parameters) -> Adam {
        Self::with_config(model, AdamConfig::default())
    }

    /// Moves `model`'s trained variables into one flat buffer (each becomes
    /// a view of its slice) and starts with zero moments.
    pub fn with_config(model: &impl Parameters, cfg: AdamConfig) -> Adam {
        let layout = GradientLayout::of(model);
        let vars = model.var_store().variables();
        let all = sorted_variables(model).into_iter().map(|(n, v)| (n, v.size())).collect();
        let params = tch::no_grad(|| {
            let parts: Vec<Tensor> = layout.names.iter().map(|n| vars[n].detach().flatten(0, -1)).collect();
            if parts.is_empty() {
                Tensor::zeros([0], (Kind::Float, model.var_store().device()))
            } else {
                Tensor::cat(&parts, 0)
            }
        });
        for ((name, shape), &at) in layout.names.iter().zip(&layout.shapes).zip(&layout.offsets) {
            let n: i64 = shape.iter().product();
            let mut var = vars[name].shallow_clone();
            var.set_data(&params.narrow(0, at as i64, n).view(shape.as_slice()));
        }
        let zeros = tch::no_grad(|| params.zeros_like());
        Adam { cfg, layout, all, exp_avg: zeros.copy(), exp_avg_sq: zeros, params, step: 0 }
    }

    pub fn config(&self) -> AdamConfig {
        self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The layout of the flat buffers.
    pub fn layout(&self) -> &GradientLayout {
        &self.layout
    }

    /// One update of every trained variable from its current gradient with
    /// learning rate `lr`.
    pub fn step(&mut self, model: &impl Parameters, lr: f64) {
        let vars = model.var_store().variables();
        let grad = tch::no_grad(|| {
            let parts: Vec<Tensor> = self
                .layout
                .names
                .iter()
                .map(|n| {
                    let v = &vars[n];
                    let g = v.grad();
                    if g.defined() { g.detach() } else { v.zeros_like() }.flatten(0, -1)
                })
                .collect();
            Tensor::cat(&parts, 0)
        });
        self.step_flat(&grad, lr);
    }

    /// One update from a flat gradient in [`GradientLayout`] order (what
    /// data-parallel workers exchange), on any device.
    pub fn step_flat(&mut self, grad: &Tensor, lr: f64) {
        assert_eq!(grad.size(), self.params.size(), "a flat gradient of the wrong length");
        let update = self.next_update(lr);
        tch::no_grad(|| {
            let g = grad.to_kind(self.params.kind()).to_device(self.params.device());
            update.apply(&self.params, &self.exp_avg, &self.exp_avg_sq, &g);
        });
    }

    /// One update from a flat gradient given as consecutive pieces (the
    /// chunks of the gradient exchange, read where they arrived). On a CPU
    /// replica each piece updates its slice of the buffers directly: no
    /// copy of the gradient, and each piece's arithmetic stays in cache. On
    /// a GPU one the pieces are copied into one device buffer first, for a
    /// single update over the whole buffer. The result does not depend on
    /// how many workers produced the gradient (the pieces are the
    /// exchange's fixed chunks).
    pub fn step_pieces(&mut self, pieces: &[&[f32]], lr: f64) {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        assert_eq!([total as i64], self.params.size().as_slice(), "a gradient of the wrong length");
        if self.params.device() != tch::Device::Cpu || self.params.kind() != Kind::Float {
            return self.step_staged(pieces, lr);
        }
        let update = self.next_update(lr);
        tch::no_grad(|| {
            let mut at = 0;
            for piece in pieces {
                let slice = |t: &Tensor| t.narrow(0, at as i64, piece.len() as i64);
                update.apply(&slice(&self.params), &slice(&self.exp_avg), &slice(&self.exp_avg_sq), &view_of(piece));
                at += piece.len();
            }
        });
    }

    /// [`Adam::step_pieces`] through one buffer on the parameters' device.
    fn step_staged(&mut self, pieces: &[&[f32]], lr: f64) {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let staging = Tensor::empty([total as i64], (Kind::Float, self.params.device()));
        tch::no_grad(|| {
            let mut at = 0;
            for piece in pieces {
                staging.narrow(0, at as i64, piece.len() as i64).copy_(&view_of(piece));
                at += piece.len();
            }
        });
        self.step_flat(&staging, lr);
    }

    /// Counts the step and fixes its coefficients.
    fn next_update(&mut self, lr: f64) -> AdamUpdate {
        self.step += 1;
        let AdamConfig { beta1, beta2, eps } = self.cfg;
        AdamUpdate {
            beta1,
            beta2,
            eps,
            step_size: lr / (1.0 - beta1.powf(self.step as f64)),
            bias_correction2_sqrt: (1.0 - beta2.powf(self.step as f64)).sqrt(),
        }
    }

    /// A variable's slice of a flat buffer, shaped like the variable.
    fn slice_of(&self, flat: &Tensor, name: &str) -> Option<Tensor> {
        let i = self.layout.names.iter().position(|n| n == name)?;
        let shape = &self.layout.shapes[i];
        let n: i64 = shape.iter().product();
        Some(flat.narrow(0, self.layout.offsets[i] as i64, n).view(shape.as_slice()))
    }

    /// The state as `optimizer.<param>.exp_avg`, `optimizer.<param>.exp_avg_sq`
    /// (every variable, zeros for those that never get a gradient) and
    /// `optimizer.step` (an i64 scalar).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.all.len() + 1);
        let opts = (self.params.kind(), self.params.device());
        for (name, shape) in &self.all {
            for (suffix, flat) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                let t = self.slice_of(flat, name).unwrap_or_else(|| Tensor::zeros(shape.as_slice(), opts));
                out.push((format!("optimizer.{name}.{suffix}"), t));
            }
        }
        out.push(("optimizer.step".to_string(), Tensor::from(self.step)));
        out
    }

    /// Restores the state written by [`Adam::named_tensors`] for `model`'s
    /// variables; other names are ignored.
    pub fn from_named_tensors(model: &impl Parameters, cfg: AdamConfig, tensors: &[(String, Tensor)]) -> Result<Adam> {
        let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut adam = Adam::with_config(model, cfg);
        let step = by_name.get("optimizer.step").context("optimizer.step missing")?;
        adam.step = step.int64_value(&[]);
        for (name, shape) in adam.all.clone() {
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("optimizer.{name}.{suffix}");
                let src = by_name.get(key.as_str()).with_context(|| format!("{key} missing"))?;
                if src.size() != shape {
                    bail!("{key} has shape {:?}, the variable {shape:?}", src.size());
                }
                let flat = if suffix == "exp_avg" { &adam.exp_avg } else { &adam.exp_avg_sq };
                if let Some(mut dst) = adam.slice_of(flat, &name) {
                    tch::no_grad(|| dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device())));
                }
            }
        }
        Ok(adam)
    }
}

/// MultiStepLR: the base rate, multiplied by `gamma` at each milestone
/// epoch. Released values: 0.001, (20, 40), 0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiStepLr {
    pub lr: f64,
    pub milestones: Vec<i64>,
    pub gamma: f64,
}

impl Default for MultiStepLr {
    fn default() -> Self {
        MultiStepLr { lr: 0.001, milestones: vec![20, 40], gamma: 0.1 }
    }
}

impl MultiStepLr {
    /// Learning rate during (0-based) `epoch`: as PyTorch's scheduler after
    /// `epoch` calls of `scheduler.step()`.
    pub fn lr_at(&self, epoch: i64) -> f64 {
        let decays = self.milestones.iter().filter(|&&m| m <= epoch).count() as i32;
        self.lr * self.gamma.powi(decays)
    }
}

/// Where a training run stands, stored in a training checkpoint's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainMeta {
    /// Epochs completed.
    pub epoch: i64,
    /// Optimiser steps taken.
    pub step: i64,
    /// The run's seed.
    pub seed: u64,
    /// Further caller metadata (loss weights, data fingerprint, ...).
    pub extra: BTreeMap<String, String>,
}

const FORMAT: &str = "locvtp-train";

/// Metadata key of a training checkpoint holding its learning-rate schedule
/// (the JSON of a [`MultiStepLr`]): scripts/export_pytorch.py writes the
/// learning rate and scheduler state of the released code from it.
pub const LR_SCHEDULE_KEY: &str = "lr_schedule";
const RESERVED: [&str; 6] = ["format", "epoch", "step", "seed", "model_config", "adam"];

/// Writes weights, optimiser state and `meta` to one safetensors file,
/// atomically. Its weights load like any model checkpoint
/// ([`checkpoint::load_weights`] skips the `optimizer.` tensors).
pub fn save_training_checkpoint(path: &Path, model: &LocVtp, adam: &Adam, meta: &TrainMeta) -> Result<()> {
    let (tensors, metadata) = training_state(&model.vs, &serde_json::to_string(&model.cfg)?, adam, meta)?;
    checkpoint::write_safetensors(path, &tensors, &metadata)
}

/// Everything a training checkpoint holds, copied between two steps so
/// that training goes on while it is written (the tensors stay on the
/// model's device until [`TrainingSnapshot::save`]).
#[derive(Debug)]
pub struct TrainingSnapshot {
    pub meta: TrainMeta,
    /// Behind a lock so that the snapshot can be shared between threads
    /// (a tensor may be sent to another thread, not used from two at once).
    tensors: std::sync::Mutex<Vec<(String, Tensor)>>,
    metadata: BTreeMap<String, String>,
}

impl TrainingSnapshot {
    /// A deep copy of `model` and `adam` as they are now.
    pub fn take(model: &LocVtp, adam: &Adam, meta: &TrainMeta) -> Result<TrainingSnapshot> {
        Self::take_store(&model.vs, &serde_json::to_string(&model.cfg)?, adam, meta)
    }

    /// A deep copy of any model's variables and `adam`; `model_config` is
    /// the JSON of the configuration that fixes the variables' shapes,
    /// which [`load_training_state`] compares on resume.
    pub fn take_store(
        vs: &nn::VarStore,
        model_config: &str,
        adam: &Adam,
        meta: &TrainMeta,
    ) -> Result<TrainingSnapshot> {
        let (tensors, metadata) = training_state(vs, model_config, adam, meta)?;
        let tensors = tch::no_grad(|| tensors.into_iter().map(|(n, t)| (n, t.copy())).collect());
        Ok(TrainingSnapshot { meta: meta.clone(), tensors: std::sync::Mutex::new(tensors), metadata })
    }

    /// Writes the snapshot as a training checkpoint, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.tensors.lock().unwrap_or_else(|e| e.into_inner());
        checkpoint::write_safetensors(path, &tensors, &self.metadata)
    }
}

type TrainingState = (Vec<(String, Tensor)>, BTreeMap<String, String>);

/// The tensors (shallow) and metadata of a training checkpoint.
fn training_state(vs: &nn::VarStore, model_config: &str, adam: &Adam, meta: &TrainMeta) -> Result<TrainingState> {
    let mut metadata = BTreeMap::new();
    for (k, v) in &meta.extra {
        if RESERVED.contains(&k.as_str()) {
            bail!("metadata key {k:?} is reserved");
        }
        metadata.insert(k.clone(), v.clone());
    }
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("epoch".into(), meta.epoch.to_string());
    metadata.insert("step".into(), meta.step.to_string());
    metadata.insert("seed".into(), meta.seed.to_string());
    metadata.insert("model_config".into(), model_config.to_string());
    metadata.insert("adam".into(), serde_json::to_string(&adam.config())?);
    let mut tensors = checkpoint::named_variables(vs);
    tensors.extend(adam.named_tensors());
    Ok((tensors, metadata))
}

/// Reads only the metadata of a training checkpoint: where a resumed run
/// starts.
pub fn read_training_meta(path: &Path) -> Result<TrainMeta> {
    meta_from(path, checkpoint::read_safetensors_metadata(path)?)
}

fn meta_from(path: &Path, metadata: BTreeMap<String, String>) -> Result<TrainMeta> {
    let get = |k: &str| metadata.get(k).with_context(|| format!("{}: metadata {k} missing", path.display()));
    if get("format")? != FORMAT {
        bail!("{}: not a training checkpoint (format {:?})", path.display(), get("format")?);
    }
    let parse =
        |k: &str| -> Result<i64> { get(k)?.parse().with_context(|| format!("{}: metadata {k}", path.display())) };
    Ok(TrainMeta {
        epoch: parse("epoch")?,
        step: parse("step")?,
        seed: get("seed")?.parse()?,
        extra: metadata
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Restores weights into `model` and returns the optimiser and metadata. The
/// model must have been built with the checkpoint's model configuration.
pub fn load_training_checkpoint(path: &Path, model: &mut LocVtp) -> Result<(Adam, TrainMeta)> {
    let (tensors, metadata) = checkpoint::read_safetensors(path)?;
    let get = |k: &str| metadata.get(k).with_context(|| format!("{}: metadata {k} missing", path.display()));
    if get("format")? != FORMAT {
        bail!("{}: not a training checkpoint (format {:?})", path.display(), get("format")?);
    }
    let cfg: ModelConfig = serde_json::from_str(get("model_config")?)?;
    if cfg != model.cfg {
        bail!(
            "{}: trained with model config {}, the model was built with {}",
            path.display(),
            get("model_config")?,
            serde_json::to_string(&model.cfg)?
        );
    }
    checkpoint::load_weights(&mut model.vs, path)?;
    let adam_cfg: AdamConfig = serde_json::from_str(get("adam")?)?;
    let adam = Adam::from_named_tensors(&*model, adam_cfg, &tensors).with_context(|| path.display().to_string())?;
    let parse =
        |k: &str| -> Result<i64> { get(k)?.parse().with_context(|| format!("{}: metadata {k}", path.display())) };
    let meta = TrainMeta {
        epoch: parse("epoch")?,
        step: parse("step")?,
        seed: get("seed")?.parse()?,
        extra: metadata.into_iter().filter(|(k, _)| !RESERVED.contains(&k.as_str())).collect(),
    };
    Ok((adam, meta))
}

/// Restores weights into `vs` and returns the optimiser and metadata of a
/// training checkpoint of any model, after checking that it was trained
/// with `model_config` (the JSON [`TrainingSnapshot::take_store`] stored).
pub fn load_training_state(path: &Path, vs: &mut nn::VarStore, model_config: &str) -> Result<(Adam, TrainMeta)> {
    let (tensors, metadata) = checkpoint::read_safetensors(path)?;
    let get = |k: &str| metadata.get(k).with_context(|| format!("{}: metadata {k} missing", path.display()));
    if get("format")? != FORMAT {
        bail!("{}: not a training checkpoint (format {:?})", path.display(), get("format")?);
    }
    let same = serde_json::from_str::<serde_json::Value>(get("model_config")?).ok()
        == serde_json::from_str::<serde_json::Value>(model_config).ok();
    if !same {
        bail!(
            "{}: trained with model config {}, the model was built with {model_config}",
            path.display(),
            get("model_config")?
        );
    }
    checkpoint::load_weights(vs, path)?;
    let adam_cfg: AdamConfig = serde_json::from_str(get("adam")?)?;
    let adam = Adam::from_named_tensors(&*vs, adam_cfg, &tensors).with_context(|| path.display().to_string())?;
    let meta = meta_from(path, metadata)?;
    Ok((adam, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::seeded;
    use crate::C3dConfig;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    /// Tiny widths; dropout off so that no test draws from libtorch's
    /// global generator while another initialises a model.
    fn tiny() -> ModelConfig {
        ModelConfig {
            c3d: C3dConfig { channels: [2, 4, 4, 8, 8], fc_dim: 16, num_classes: 5, ..C3dConfig::default() },
            projection_dim: 8,
            text_dim: 12,
            num_segments: 3,
            dropout: 0.0,
            ..ModelConfig::default()
        }
    }

    struct Batch {
        clips: Tensor,
        text: TextBatch,
        draws: Draws,
    }

    fn batch(seed: i64) -> Batch {
        let lens = [4i64, 2, 3];
        let (b, t, n, h) = (3, 3, 4, 12);
        let (clips, sentence, words) = seeded(seed, || {
            (
                Tensor::randint(256, [b, t, 16, 112, 112, 3], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8),
                Tensor::randn([b, h], (Kind::Float, Device::Cpu)),
                Tensor::randn([b, n, h], (Kind::Float, Device::Cpu)),
            )
        });
        let mask_rows: Vec<bool> = lens.iter().flat_map(|&l| (0..n).map(move |j| j < l)).collect();
        let word_mask = Tensor::from_slice(&mask_rows).reshape([b, n]);
        let text = TextBatch { sentence, words, word_mask, word_lens: lens.to_vec() };
        let draws = Draws::sample(b, t, &lens, &mut ChaCha8Rng::seed_from_u64(seed as u64));
        Batch { clips, text, draws }
    }

    fn loss(model: &LocVtp, x: &Batch) -> LossTerms {
        forward_losses(model, &x.clips, &x.text, &x.draws, &LossWeights::default())
    }

    /// Forward, backward, Adam step, zeroed gradients; returns the loss.
    fn train_step(model: &LocVtp, adam: &mut Adam, x: &Batch, lr: f64) -> f64 {
        let l = loss(model, x);
        l.total.backward();
        adam.step(model, lr);
        zero_gradients(model);
        l.total.double_value(&[])
    }

    #[test]
    fn training_steps_lower_the_loss_on_a_fixed_batch() {
        let model = LocVtp::new(&tiny(), Device::Cpu, 0);
        let mut adam = Adam::new(&model);
        let x = batch(1);
        let current = |m: &LocVtp| tch::no_grad(|| loss(m, &x).total.double_value(&[]));
        // A small step follows the gradient: the loss must go down.
        let before = train_step(&model, &mut adam, &x, 1e-5);
        let after_small = current(&model);
        assert!(before.is_finite());
        assert!(after_small < before, "{after_small} after a small step, {before} before");
        // At the released rate the arg-max positives can switch between
        // steps, so the loss need not fall every step, but it does over a few.
        for _ in 0..3 {
            train_step(&model, &mut adam, &x, 1e-3);
        }
        let after = current(&model);
        assert!(after < after_small - 1.0, "{after} after four steps, {before} before");
        assert_eq!(adam.steps(), 4);
    }

    #[test]
    fn splicing_fc6_features_equals_encoding_spliced_clips() {
        let model = LocVtp::new(&tiny(), Device::Cpu, 2);
        let x = batch(2);
        let (b, t) = (3, 3);
        tch::no_grad(|| {
            let flat = |c: &Tensor| normalise_u8_clips(&c.reshape([b * t, 16, 112, 112, 3]));
            let (fc6, _) = model.encode_clips(&flat(&x.clips), false);
            let via_features = model.vid_proj.forward_t(&splice_samples(&fc6.reshape([b, t, -1]), &x.draws), false);
            let (_, via_clips) = model.encode_clips(&flat(&splice_samples(&x.clips, &x.draws)), false);
            let diff = (via_features - via_clips.reshape([b, t, -1])).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "max difference {diff}");
        });
    }

    /// A VarStore holding `w` `[3]` and an untouched `u` `[2]`, float64.
    fn toy() -> (nn::VarStore, Tensor, Tensor) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[0.5f64, -1.0, 2.0]));
        let u = vs.root().var_copy("u", &Tensor::from_slice(&[3.0f64, -4.0]));
        (vs, w, u)
    }

    #[test]
    fn adam_matches_a_hand_computed_update() {
        let (vs, w, u) = toy();
        let cfg = AdamConfig::default();
        let mut adam = Adam::with_config(&vs, cfg);
        let grads = [[0.1, -0.2, 0.3], [-0.4, 0.0, 1.0], [2.0, 0.5, -0.01]];
        let lrs = [0.01, 0.01, 0.001];

        let mut p = [0.5f64, -1.0, 2.0];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for (k, (g, lr)) in grads.iter().zip(lrs).enumerate() {
            // Only `w` gets a gradient: `u` must not move.
            (&w * Tensor::from_slice(g)).sum(None).backward();
            adam.step(&vs, lr);
            zero_gradients(&vs);

            let step = (k + 1) as i32;
            for j in 0..3 {
                m[j] = 0.9 * m[j] + 0.1 * g[j];
                v[j] = 0.999 * v[j] + 0.001 * g[j] * g[j];
                let m_hat = m[j] / (1.0 - 0.9f64.powi(step));
                let v_hat_sqrt = v[j].sqrt() / (1.0 - 0.999f64.powi(step)).sqrt();
                p[j] -= lr * m_hat / (v_hat_sqrt + 1e-8);
            }
            let got = Vec::<f64>::try_from(&w).unwrap();
            for j in 0..3 {
                assert!((got[j] - p[j]).abs() < 1e-14, "step {step}, w[{j}]: {} vs {}", got[j], p[j]);
            }
        }
        assert_eq!(Vec::<f64>::try_from(&u).unwrap(), vec![3.0, -4.0]);
    }

    #[test]
    fn flat_gradients_follow_the_layout() {
        let (vs, w, _u) = toy();
        (&w * Tensor::from_slice(&[1.0f64, 2.0, 3.0])).sum(None).backward();
        let layout = GradientLayout::of(&vs);
        assert_eq!(layout.names, vec!["u".to_string(), "w".to_string()]);
        assert_eq!((layout.offsets.clone(), layout.total), (vec![0, 2], 5));
        // `u` has no gradient: zeros in its slice, so every worker's vector
        // has the same length.
        assert_eq!(layout.flatten(&vs, 0.5), vec![0.0, 0.0, 0.5, 1.0, 1.5]);
        let names = parameter_names(&vs);
        assert_eq!(names, layout.names);
        assert_eq!(Vec::<f64>::try_from(&gradients(&vs)[1]).unwrap(), vec![1.0, 2.0, 3.0]);
    }

    /// `torch.optim.Adam`'s per-parameter loop, as the reference for the
    /// flat implementation.
    struct PerParameterAdam {
        exp_avg: Vec<Tensor>,
        exp_avg_sq: Vec<Tensor>,
        step: i32,
    }

    impl PerParameterAdam {
        fn new(model: &impl Parameters) -> Self {
            let zeros: Vec<Tensor> = sorted_variables(model).iter().map(|(_, v)| v.zeros_like()).collect();
            PerParameterAdam { exp_avg_sq: zeros.iter().map(|z| z.copy()).collect(), exp_avg: zeros, step: 0 }
        }

        fn step(&mut self, model: &impl Parameters, lr: f64) {
            self.step += 1;
            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
            let (bc1, bc2_sqrt) = (1.0 - b1.powi(self.step), (1.0 - b2.powi(self.step)).sqrt());
            tch::no_grad(|| {
                for (i, (_, mut p)) in sorted_variables(model).into_iter().enumerate() {
                    let g = p.grad();
                    let g = if g.defined() { g } else { p.zeros_like() };
                    let _ = self.exp_avg[i].lerp_(&g, 1.0 - b1);
                    let _ = self.exp_avg_sq[i].g_mul_scalar_(b2);
                    let _ = self.exp_avg_sq[i].addcmul_(&(&g * (1.0 - b2)), &g);
                    let denom = self.exp_avg_sq[i].sqrt() / bc2_sqrt + eps;
                    let _ = p.g_add_(&(self.exp_avg[i].divide(&denom) * (-lr / bc1)));
                }
            });
        }
    }

    #[test]
    fn flat_adam_equals_per_parameter_adam() {
        let flat_model = LocVtp::new(&tiny(), Device::Cpu, 11);
        let reference = LocVtp::new(&tiny(), Device::Cpu, 11);
        let mut flat = Adam::new(&flat_model);
        let mut per_parameter = PerParameterAdam::new(&reference);
        for (k, lr) in [1e-3, 1e-3, 5e-4].into_iter().enumerate() {
            let x = batch(20 + k as i64);
            // The flat optimiser takes the exchanged form of the gradient.
            loss(&flat_model, &x).total.backward();
            let g = flat.layout().flatten(&flat_model, 1.0);
            // In uneven pieces, as the exchange's chunks arrive.
            let pieces: Vec<&[f32]> = g.chunks(1000 + 37 * k).collect();
            flat.step_pieces(&pieces, lr);
            zero_gradients(&flat_model);
            loss(&reference, &x).total.backward();
            per_parameter.step(&reference, lr);
            zero_gradients(&reference);
        }
        let (mut moved, mut worst) = (0, 0.0f64);
        for (name, v) in reference.vs.variables() {
            let got = &flat_model.vs.variables()[&name];
            worst = worst.max((got - &v).abs().max().double_value(&[]));
            moved += usize::from(!v.equal(&LocVtp::new(&tiny(), Device::Cpu, 11).vs.variables()[&name]));
        }
        assert!(worst < 1e-6, "largest difference {worst}");
        assert!(moved > 10, "only {moved} variables moved: the comparison would prove nothing");
        // The moments also match, under the checkpoint names.
        let named: HashMap<String, Tensor> = flat.named_tensors().into_iter().collect();
        for (i, (name, _)) in sorted_variables(&reference).iter().enumerate() {
            let m = &named[&format!("optimizer.{name}.exp_avg")];
            assert!((m - &per_parameter.exp_avg[i]).abs().max().double_value(&[]) < 1e-6, "{name}.exp_avg");
        }
    }

    #[test]
    fn a_gradient_in_pieces_steps_as_one_buffer_does() {
        // The device path (pieces gathered into one buffer, one update)
        // against the CPU path (each piece updates its slice).
        let (a, b) = (LocVtp::new(&tiny(), Device::Cpu, 4), LocVtp::new(&tiny(), Device::Cpu, 4));
        let (mut pieces_adam, mut staged_adam) = (Adam::new(&a), Adam::new(&b));
        let initial = pieces_adam.params.copy();
        for k in 0..3 {
            let x = batch(30 + k);
            loss(&a, &x).total.backward();
            let g = pieces_adam.layout().flatten(&a, 1.0);
            zero_gradients(&a);
            let pieces: Vec<&[f32]> = g.chunks(777).collect();
            pieces_adam.step_pieces(&pieces, 1e-3);
            staged_adam.step_staged(&pieces, 1e-3);
            let (pa, pb) = (&pieces_adam.params, &staged_adam.params);
            let worst = (pa - pb).abs().max().double_value(&[]);
            assert!(worst < 1e-6, "step {k}: largest difference {worst}");
        }
        assert_eq!(pieces_adam.steps(), staged_adam.steps());
        assert!(!pieces_adam.params.allclose(&initial, 1e-7, 1e-9, false), "the steps moved the parameters");
    }

    #[test]
    fn replicas_with_averaged_gradients_stay_identical() {
        let (a, b) = (LocVtp::new(&tiny(), Device::Cpu, 6), LocVtp::new(&tiny(), Device::Cpu, 6));
        let (mut adam_a, mut adam_b) = (Adam::new(&a), Adam::new(&b));
        let (xa, xb) = (batch(7), batch(8));
        loss(&a, &xa).total.backward();
        loss(&b, &xb).total.backward();
        let (ga, gb) = (adam_a.layout().flatten(&a, 0.5), adam_b.layout().flatten(&b, 0.5));
        assert_ne!(ga, gb, "different batches, different gradients");
        let mean: Vec<f32> = ga.iter().zip(&gb).map(|(x, y)| x + y).collect();
        let pieces: Vec<&[f32]> = mean.chunks(4096).collect();
        adam_a.step_pieces(&pieces, 1e-3);
        adam_b.step_pieces(&pieces, 1e-3);
        for (name, va) in a.vs.variables() {
            assert!(va.equal(&b.vs.variables()[&name]), "{name} differs between replicas");
        }
        // fc7 is never reached by the loss: zero gradient, zero update.
        let fc7 = "videoEncoder.embednet.fc7.weight";
        assert!(a.vs.variables()[fc7].equal(&LocVtp::new(&tiny(), Device::Cpu, 6).vs.variables()[fc7]));
    }

    #[test]
    fn saved_optimiser_state_gives_an_identical_next_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch-1.safetensors");
        let x = batch(3);
        let a = LocVtp::new(&tiny(), Device::Cpu, 4);
        let mut adam_a = Adam::new(&a);
        train_step(&a, &mut adam_a, &x, 1e-3);
        let meta = TrainMeta {
            epoch: 1,
            step: 1,
            seed: 4,
            extra: BTreeMap::from([("loss_weights".to_string(), "{}".to_string())]),
        };
        save_training_checkpoint(&path, &a, &adam_a, &meta).unwrap();

        let mut b = LocVtp::new(&tiny(), Device::Cpu, 99);
        let (mut adam_b, meta_b) = load_training_checkpoint(&path, &mut b).unwrap();
        assert_eq!(meta_b, meta);
        assert_eq!(adam_b.steps(), 1);

        train_step(&a, &mut adam_a, &x, 1e-3);
        train_step(&b, &mut adam_b, &x, 1e-3);
        for (name, va) in a.vs.variables() {
            assert!(va.equal(&b.vs.variables()[&name]), "{name} differs after the resumed step");
        }
        for ((na, ta), (nb, tb)) in adam_a.named_tensors().iter().zip(adam_b.named_tensors().iter()) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{na} differs");
        }

        // The same file also loads as plain weights, and not into another width.
        let mut c = LocVtp::new(&tiny(), Device::Cpu, 5);
        assert!(checkpoint::load_weights(&mut c.vs, &path).unwrap().unexpected.is_empty());
        let mut wide_cfg = tiny();
        wide_cfg.projection_dim = 4;
        let mut wide = LocVtp::new(&wide_cfg, Device::Cpu, 5);
        let err = load_training_checkpoint(&path, &mut wide).unwrap_err().to_string();
        assert!(err.contains("model config"), "{err}");
    }

    #[test]
    #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
    fn cuda_training_step_matches_cpu() {
        let _ = crate::amp::load_torch_cuda();
        assert!(tch::Cuda::is_available(), "no CUDA device");
        let cpu = LocVtp::new(&tiny(), Device::Cpu, 10);
        let mut gpu = LocVtp::new(&tiny(), Device::Cuda(0), 10);
        gpu.vs.copy(&cpu.vs).unwrap();
        // Clips, text and draws stay on the CPU: forward_losses moves them.
        let x = batch(11);
        let (lc, lg) = (loss(&cpu, &x), loss(&gpu, &x));
        assert_eq!(lg.total.device(), Device::Cuda(0));
        eprintln!("cpu {:?}\ngpu {:?}", lc.values(), lg.values());
        for ((name, a), (_, b)) in lc.values().iter().zip(lg.values()) {
            // cuDNN may run the convolutions in TF32.
            assert!((a - b).abs() <= 1e-2 * a.abs().max(1e-3), "{name}: cpu {a}, gpu {b}");
        }
        lc.total.backward();
        lg.total.backward();
        // Per-tensor comparisons of conv bias gradients (large sums with
        // cancellation) are ill-conditioned under TF32; the whole gradient
        // vector is not.
        let flat = |gs: Vec<Tensor>| {
            Tensor::cat(&gs.iter().map(|g| g.to_device(Device::Cpu).reshape([-1])).collect::<Vec<_>>(), 0)
        };
        let (gc, gg) = (flat(gradients(&cpu)), flat(gradients(&gpu)));
        let d = (&gc - &gg).norm().double_value(&[]) / gc.norm().double_value(&[]);
        assert!(d < 1e-2, "gradients differ by {d} (relative norm)");
        let mut adam = Adam::new(&gpu);
        adam.step(&gpu, 1e-3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.safetensors");
        save_training_checkpoint(&path, &gpu, &adam, &TrainMeta::default()).unwrap();
        let mut back = LocVtp::new(&tiny(), Device::Cpu, 12);
        let (adam_back, _) = load_training_checkpoint(&path, &mut back).unwrap();
        assert_eq!(adam_back.steps(), 1);
        for (name, v) in gpu.vs.variables() {
            assert!(v.to_device(Device::Cpu).equal(&back.vs.variables()[&name]), "{name}");
        }
    }

    #[test]
    fn multistep_schedule_decays_at_milestones() {
        let s = MultiStepLr::default();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(s.lr_at(0), 1e-3) && close(s.lr_at(19), 1e-3));
        assert!(close(s.lr_at(20), 1e-4) && close(s.lr_at(39), 1e-4));
        assert!(close(s.lr_at(40), 1e-5) && close(s.lr_at(49), 1e-5));
        let parsed: MultiStepLr = serde_json::from_str(r#"{"milestones": [2]}"#).unwrap();
        assert!(close(parsed.lr_at(2), 1e-4));
        assert!(serde_json::from_str::<MultiStepLr>(r#"{"steps": [2]}"#).is_err());
    }
}
