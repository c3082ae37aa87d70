//! A 2D temporal adjacent network for temporal grounding on extracted clip
//! features, after 2D-TAN (Zhang et al., "Learning 2D Temporal Adjacent
//! Networks for Moment Localization with Natural Language", AAAI 2020):
//! the downstream task LocVTP's features are judged by.
//!
//! A video's clip features are resampled to a fixed number of rows and
//! pooled to N clips; every candidate moment (i, j), i <= j, of a sparse
//! set is the max-pool of clips i..j, which lays the candidates out on an
//! N x N map; the map is fused with the sentence, convolved with the valid
//! cells' counts as normaliser, and scored per cell. Training regresses
//! each cell's score on its scaled IoU with the annotated moment.
//!
//! One difference from 2D-TAN, on purpose: the sentence vector comes from
//! the same frozen BERT-family encoder as pre-training (its `[CLS]` state)
//! through one linear layer, where 2D-TAN runs a 3-layer LSTM over GloVe
//! word vectors.

use crate::init::default_uniform;
use crate::moments::{iou, nms, Moment};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

/// 2D-TAN's per-dataset configurations (its `*-pool.yaml` files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TanPreset {
    /// 16 clips, every span (136 candidates), 8 map layers of kernel 5,
    /// IoU scaled between 0.5 and 1, NMS 0.45, reported at IoU 0.3/0.5/0.7.
    #[default]
    CharadesSta,
    /// 64 clips, pooling counts 16/8/8 (1104 candidates), 4 map layers of
    /// kernel 9, IoU scaled between 0.5 and 1, NMS 0.5.
    Activitynet,
    /// 128 clips, pooling counts 16/8/8/8 (2548 candidates), 8 map layers
    /// of kernel 5, IoU scaled between 0.3 and 0.7, NMS 0.4, reported at
    /// IoU 0.1/0.3/0.5.
    Tacos,
}

/// Everything that decides a grounding model's shapes and its training
/// targets, decoding and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TanConfig {
    /// Width of the input clip features.
    pub feature_dim: i64,
    /// Width of the frozen text encoder's sentence vector.
    pub text_dim: i64,
    /// Rows every video's features are resampled to before pooling (256).
    pub sample_clips: i64,
    /// N, clips of the 2D map; `sample_clips` must be a multiple.
    pub clips: i64,
    /// H, the channels of the map.
    pub hidden: i64,
    /// Diagonals per scale of the sparse map: the first scale takes every
    /// span up to its count; each later one doubles the start stride.
    pub pooling_counts: Vec<i64>,
    /// L, convolutions over the fused map.
    pub map_layers: i64,
    /// Their kernel size (odd).
    pub kernel: i64,
    /// IoU at or below which a candidate's target is 0.
    pub min_iou: f64,
    /// IoU at or above which a candidate's target is 1.
    pub max_iou: f64,
    /// Non-maximum suppression threshold at inference.
    pub nms_threshold: f64,
    /// IoU thresholds the dataset's results are reported at.
    pub thresholds: Vec<f64>,
}

impl TanPreset {
    /// The preset's configuration for features of width `feature_dim` and
    /// sentence vectors of width `text_dim`.
    pub fn config(self, feature_dim: i64, text_dim: i64) -> TanConfig {
        let base = TanConfig {
            feature_dim,
            text_dim,
            sample_clips: 256,
            clips: 16,
            hidden: 512,
            pooling_counts: vec![16],
            map_layers: 8,
            kernel: 5,
            min_iou: 0.5,
            max_iou: 1.0,
            nms_threshold: 0.45,
            thresholds: vec![0.3, 0.5, 0.7],
        };
        match self {
            TanPreset::CharadesSta => base,
            TanPreset::Activitynet => TanConfig {
                clips: 64,
                pooling_counts: vec![16, 8, 8],
                map_layers: 4,
                kernel: 9,
                nms_threshold: 0.5,
                ..base
            },
            TanPreset::Tacos => TanConfig {
                clips: 128,
                pooling_counts: vec![16, 8, 8, 8],
                min_iou: 0.3,
                max_iou: 0.7,
                nms_threshold: 0.4,
                thresholds: vec![0.1, 0.3, 0.5],
                ..base
            },
        }
    }
}

impl TanConfig {
    /// Shapes and ranges that the model and its decoding rely on.
    pub fn validate(&self) -> Result<()> {
        if self.clips < 1 || self.sample_clips < self.clips || self.sample_clips % self.clips != 0 {
            bail!("sample_clips ({}) must be a positive multiple of clips ({})", self.sample_clips, self.clips);
        }
        if self.kernel < 1 || self.kernel % 2 == 0 {
            bail!("kernel must be odd, got {}", self.kernel);
        }
        if self.map_layers < 1 || self.hidden < 1 || self.feature_dim < 1 || self.text_dim < 1 {
            bail!("map_layers, hidden, feature_dim and text_dim must be at least 1");
        }
        if self.pooling_counts.is_empty() || self.pooling_counts.iter().any(|&c| c < 1) {
            bail!("pooling_counts must be a non-empty list of counts >= 1");
        }
        if !(0.0..1.0).contains(&self.min_iou) || self.max_iou <= self.min_iou || self.max_iou > 1.0 {
            bail!("need 0 <= min_iou < max_iou <= 1, got {} and {}", self.min_iou, self.max_iou);
        }
        if self.thresholds.is_empty() || self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            bail!("thresholds must be IoUs in [0, 1]");
        }
        Ok(())
    }

    /// Zero padding of the first map convolution: enough that the L
    /// unpadded layers after it bring the map back to N x N (16 for all
    /// three of 2D-TAN's configurations).
    pub fn first_padding(&self) -> i64 {
        self.map_layers * (self.kernel - 1) / 2
    }

    /// The candidate cells `(i, j)` of the sparse map, diagonal by
    /// diagonal (offset `j - i` ascending), starts ascending. Scale `s`
    /// with `c_s` diagonals uses start stride `2^s` and offsets
    /// `a_s + 2^s k` for `k < c_s`, where `a_0 = 0` and
    /// `a_{s+1} = a_s + 2^s (c_s + 1)`; a cell must end inside the map.
    pub fn valid_cells(&self) -> Vec<(i64, i64)> {
        let n = self.clips;
        let (mut stride, mut first) = (1i64, 0i64);
        let mut cells = Vec::new();
        for (s, &count) in self.pooling_counts.iter().enumerate() {
            if s > 0 {
                stride *= 2;
            }
            for k in 0..count {
                let offset = first + stride * k;
                let mut start = 0;
                while start + offset < n {
                    cells.push((start, start + offset));
                    start += stride;
                }
            }
            first += stride * (count + 1);
        }
        cells
    }

    /// The candidate moment of cell `(i, j)` in a video of `duration`
    /// seconds: clips i..=j of N equal parts.
    pub fn moment(&self, i: i64, j: i64, duration: f64) -> Moment {
        let n = self.clips as f64;
        (i as f64 * duration / n, (j + 1) as f64 * duration / n)
    }

    /// Every candidate moment of a video of `duration` seconds.
    pub fn candidates(&self, duration: f64) -> Vec<Moment> {
        self.valid_cells().into_iter().map(|(i, j)| self.moment(i, j, duration)).collect()
    }

    /// The training target of every cell (row-major `[N, N]`; cells off the
    /// sparse map hold values the loss never reads): the candidate's IoU
    /// with the truth, scaled linearly from 0 at `min_iou` to 1 at
    /// `max_iou` and clamped.
    pub fn target_map(&self, truth: Moment, duration: f64) -> Vec<f32> {
        let n = self.clips;
        let mut out = vec![0f32; (n * n) as usize];
        for i in 0..n {
            for j in i..n {
                let o = iou(self.moment(i, j, duration), truth);
                let scaled = ((o - self.min_iou) / (self.max_iou - self.min_iou)).clamp(0.0, 1.0);
                out[(i * n + j) as usize] = scaled as f32;
            }
        }
        out
    }
}

/// A video's features `values` (row-major `[rows, dim]`) as 2D-TAN feeds
/// them: every row L2-normalised, then resampled to `m` rows, `[m, dim]`.
/// Row k averages input rows `b_k .. b_{k+1}` (end excluded) with
/// `b_k = min(round(k rows / m), rows - 1)` (ties to even), or copies row
/// `b_k` when that range is empty, as when a short video is stretched.
pub fn resample(values: &[f32], rows: usize, dim: usize, m: usize) -> Tensor {
    assert!(rows > 0 && values.len() == rows * dim, "{} values for {rows} rows of {dim}", values.len());
    let x = Tensor::from_slice(values).reshape([rows as i64, dim as i64]);
    let x = &x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    let bound = |k: usize| ((k as f64 * rows as f64 / m as f64).round_ties_even() as usize).min(rows - 1);
    let mut weights = vec![0f32; m * rows];
    for k in 0..m {
        let (a, b) = (bound(k), bound(k + 1));
        if a < b {
            for r in a..b {
                weights[k * rows + r] = 1.0 / (b - a) as f32;
            }
        } else {
            weights[k * rows + a] = 1.0;
        }
    }
    Tensor::from_slice(&weights).reshape([m as i64, rows as i64]).matmul(&x)
}

/// The grounding model. Variable names follow its parts: the frame layer,
/// the fusion of map and sentence, the map convolutions and the score.
#[derive(Debug)]
pub struct Tan {
    pub vs: nn::VarStore,
    pub cfg: TanConfig,
    /// `frame_layer.vis_conv`: 1x1 convolution of the resampled rows to H.
    vis_conv: nn::Conv1D,
    /// `fusion_layer.tex_linear`: sentence vector to H.
    tex_linear: nn::Linear,
    /// `fusion_layer.vis_conv`: 1x1 convolution of the map.
    map_conv: nn::Conv2D,
    /// `map_layer.convs.{l}`.
    convs: Vec<nn::Conv2D>,
    /// `pred_layer`: 1x1 convolution to one score per cell.
    pred: nn::Conv2D,
    /// `[1, 1, N, N]`, 1 at the sparse map's cells.
    mask: Tensor,
    /// Flat index `i N + j` of every cell, in [`TanConfig::valid_cells`] order.
    cell_index: Tensor,
    /// Per diagonal offset with cells, the starts of its cells.
    diagonals: Vec<(i64, Tensor)>,
}

fn conv_config(fan_in: i64, padding: i64) -> nn::ConvConfig {
    nn::ConvConfig { padding, ws_init: default_uniform(fan_in), bs_init: default_uniform(fan_in), ..Default::default() }
}

/// libtorch's generator is process-wide: seeding and building under one
/// lock makes the initial weights a function of the seed.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tan {
    /// A freshly initialised model (PyTorch's default initialisation); the
    /// same `seed` gives the same weights.
    pub fn new(cfg: &TanConfig, device: Device, seed: i64) -> Result<Tan> {
        cfg.validate()?;
        let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let h = cfg.hidden;
        let vis_conv =
            nn::conv1d(&root / "frame_layer" / "vis_conv", cfg.feature_dim, h, 1, conv_config(cfg.feature_dim, 0));
        let lin = nn::LinearConfig {
            ws_init: default_uniform(cfg.text_dim),
            bs_init: Some(default_uniform(cfg.text_dim)),
            bias: true,
        };
        let tex_linear = nn::linear(&root / "fusion_layer" / "tex_linear", cfg.text_dim, h, lin);
        let map_conv = nn::conv2d(&root / "fusion_layer" / "vis_conv", h, h, 1, conv_config(h, 0));
        let k = cfg.kernel;
        let convs = (0..cfg.map_layers)
            .map(|l| {
                let padding = if l == 0 { cfg.first_padding() } else { 0 };
                nn::conv2d(&root / "map_layer" / "convs" / l, h, h, k, conv_config(h * k * k, padding))
            })
            .collect();
        let pred = nn::conv2d(&root / "pred_layer", h, 1, 1, conv_config(h, 0));

        let n = cfg.clips;
        let cells = cfg.valid_cells();
        let mut mask = vec![0f32; (n * n) as usize];
        for &(i, j) in &cells {
            mask[(i * n + j) as usize] = 1.0;
        }
        let mut diagonals: Vec<(i64, Vec<i64>)> = Vec::new();
        let mut sorted = cells.clone();
        sorted.sort_by_key(|&(i, j)| (j - i, i));
        for &(i, j) in &sorted {
            match diagonals.last_mut() {
                Some((d, starts)) if *d == j - i => starts.push(i),
                _ => diagonals.push((j - i, vec![i])),
            }
        }
        let flat: Vec<i64> = sorted.iter().map(|&(i, j)| i * n + j).collect();
        Ok(Tan {
            cfg: cfg.clone(),
            vis_conv,
            tex_linear,
            map_conv,
            convs,
            pred,
            mask: Tensor::from_slice(&mask).reshape([1, 1, n, n]).to_device(device),
            cell_index: Tensor::from_slice(&flat).to_device(device),
            diagonals: diagonals.into_iter().map(|(d, s)| (d, Tensor::from_slice(&s).to_device(device))).collect(),
            vs,
        })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The sparse map's cells, `[N, N]` float (1 valid, 0 not).
    pub fn mask(&self) -> Tensor {
        self.mask.view([self.cfg.clips, self.cfg.clips])
    }

    /// Pooled clips `[B, H, N]` to the candidate map `[B, H, N, N]`: cell
    /// (i, j) holds the channel-wise max of clips i..=j where the sparse
    /// map has a cell, zero elsewhere.
    fn proposal_map(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (b, h, n) = (size[0], size[1], size[2]);
        let mut running = x.shallow_clone();
        let mut pieces = Vec::with_capacity(self.diagonals.len());
        let mut d = 0;
        for (offset, starts) in &self.diagonals {
            // Max over spans of length offset + 1, by extending the spans
            // of the previous length by one clip.
            while d < *offset {
                d += 1;
                running = running.narrow(2, 0, n - d).maximum(&x.narrow(2, d, n - d));
            }
            pieces.push(running.index_select(2, starts));
        }
        let values = Tensor::cat(&pieces, 2);
        Tensor::zeros([b, h, n * n], (values.kind(), values.device()))
            .index_copy(2, &self.cell_index, &values)
            .view([b, h, n, n])
    }

    /// Resampled video rows `[B, M, D]` and sentence vectors
    /// `[B, text_dim]` to score logits `[B, N, N]` (meaningful at the sparse
    /// map's cells only).
    pub fn forward(&self, video: &Tensor, sentence: &Tensor) -> Tensor {
        let cfg = &self.cfg;
        let b = video.size()[0];
        let stride = cfg.sample_clips / cfg.clips;
        let x = self.vis_conv.forward(&video.transpose(1, 2)).relu();
        let x = x.avg_pool1d([stride], [stride], [0], false, true);
        let map = self.map_conv.forward(&self.proposal_map(&x));
        let text = self.tex_linear.forward(sentence).view([b, cfg.hidden, 1, 1]);
        let fused = map * text;
        let mut x = &fused / fused.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12) * &self.mask;
        let mut mask = self.mask.shallow_clone();
        let k = cfg.kernel;
        let ones = Tensor::ones([1, 1, k, k], (Kind::Float, self.device()));
        for (l, conv) in self.convs.iter().enumerate() {
            let padding = if l == 0 { cfg.first_padding() } else { 0 };
            x = conv.forward(&x).relu();
            // How many valid cells each output saw: the output is their
            // average rather than their sum, and is valid if it saw any.
            let count = mask.conv2d(&ones, None::<Tensor>, [1, 1], [padding, padding], [1, 1], 1).round();
            let seen = count.gt(0.0).to_kind(Kind::Float);
            // Not `*=`: an in-place product would overwrite the ReLU output
            // its backward pass reads.
            x = x.multiply(&(&seen / count.clamp_min(1.0)));
            mask = seen;
        }
        self.pred.forward(&x).squeeze_dim(1)
    }

    /// Binary cross-entropy between the cells' scores and their targets
    /// `[B, N, N]`, averaged over the sparse map's cells of the batch.
    pub fn loss(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let mask = self.mask.view([1, self.cfg.clips, self.cfg.clips]).expand_as(logits);
        let bce = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::None);
        (bce * &mask).sum(Kind::Float) / mask.sum(Kind::Float)
    }

    /// The candidates of each query of a batch ranked by score, then
    /// non-maximum suppression, at most `top_k` moments in seconds.
    pub fn rank(&self, logits: &Tensor, durations: &[f64], top_k: usize) -> Vec<Vec<Moment>> {
        let n = self.cfg.clips;
        let cells = self.cfg.valid_cells();
        let scores = logits.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let flat = Vec::<f32>::try_from(scores.view([-1])).expect("float scores");
        durations
            .iter()
            .enumerate()
            .map(|(b, &duration)| {
                let at = |&(i, j): &(i64, i64)| flat[b * (n * n) as usize + (i * n + j) as usize];
                let mut order: Vec<usize> = (0..cells.len()).collect();
                // The logit orders cells as the sigmoid does; ties keep the
                // shorter span first.
                order.sort_by(|&a, &b| at(&cells[b]).total_cmp(&at(&cells[a])));
                let sorted: Vec<Moment> =
                    order.iter().map(|&c| self.cfg.moment(cells[c].0, cells[c].1, duration)).collect();
                nms(&sorted, self.cfg.nms_threshold, top_k)
            })
            .collect()
    }
}

/// Scales every gradient down so that their joint L2 norm is at most
/// `max_norm` (as `torch.nn.utils.clip_grad_norm_`); returns the norm
/// before clipping.
pub fn clip_grad_norm(vs: &nn::VarStore, max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = vs.trainable_variables().iter().map(|v| v.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let total = tch::no_grad(|| {
        grads.iter().map(|g| g.pow_tensor_scalar(2).sum(Kind::Double)).fold(Tensor::from(0.0f64), |a, b| a + b).sqrt()
    })
    .double_value(&[]);
    let scale = max_norm / (total + 1e-6);
    if scale < 1.0 {
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        });
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{zero_gradients, Adam};

    #[test]
    fn presets_have_2d_tan_candidate_counts_and_map_sizes() {
        for (preset, clips, cells) in
            [(TanPreset::CharadesSta, 16, 136), (TanPreset::Activitynet, 64, 1104), (TanPreset::Tacos, 128, 2548)]
        {
            let cfg = preset.config(500, 384);
            cfg.validate().unwrap();
            assert_eq!(cfg.clips, clips);
            assert_eq!(cfg.valid_cells().len(), cells, "{preset:?}");
            assert_eq!(cfg.first_padding(), 16, "{preset:?}: the configs pad the first layer by 16");
            let mut seen = std::collections::HashSet::new();
            for (i, j) in cfg.valid_cells() {
                assert!(i <= j && j < clips && seen.insert((i, j)), "{preset:?}: ({i}, {j})");
            }
        }
        // ActivityNet's second scale: stride 2, offsets 17, 19, ..., 31.
        let cells = TanPreset::Activitynet.config(1, 1).valid_cells();
        assert!(cells.contains(&(2, 19)) && !cells.contains(&(1, 18)) && !cells.iter().any(|&(i, j)| j - i == 16));
        assert_eq!(TanPreset::Tacos.config(1, 1).thresholds, [0.1, 0.3, 0.5]);
    }

    #[test]
    fn resampling_averages_l2_normalised_rows_and_stretches_short_videos() {
        // Four rows to two, each row unit length first: rows 0-1 averaged,
        // then row 2 alone, since the bounds stop at the last row.
        let values = [3.0f32, 4.0, 0.0, 2.0, 1.0, 0.0, 0.0, 5.0];
        let r = resample(&values, 4, 2, 2);
        let got = Vec::<f32>::try_from(r.view([-1])).unwrap();
        let want = [0.3f32, 0.9, 1.0, 0.0];
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?}");
        // Two rows to four: each row repeated, the last one only ever copied.
        let r = resample(&[1.0, 0.0, 0.0, 1.0], 2, 2, 4);
        let got = Vec::<f32>::try_from(r.view([-1])).unwrap();
        assert_eq!(got, [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
    }

    fn tiny(preset: TanPreset) -> TanConfig {
        TanConfig { hidden: 8, map_layers: 2, kernel: 3, sample_clips: 32, ..preset.config(6, 5) }
    }

    #[test]
    fn shapes_mask_and_map_values() {
        let cfg = TanConfig { clips: 8, pooling_counts: vec![4, 2], ..tiny(TanPreset::Activitynet) };
        let model = Tan::new(&cfg, Device::Cpu, 0).unwrap();
        let names: Vec<String> = crate::checkpoint::named_variables(&model.vs).into_iter().map(|(n, _)| n).collect();
        for name in [
            "frame_layer.vis_conv.weight",
            "fusion_layer.tex_linear.weight",
            "map_layer.convs.1.bias",
            "pred_layer.weight",
        ] {
            assert!(names.contains(&name.to_string()), "{name} missing from {names:?}");
        }
        assert_eq!(model.vs.variables()["map_layer.convs.0.weight"].size(), [8, 8, 3, 3]);
        // Counts 4, 2 on 8 clips: offsets 0..3 at every start, 5 and 7 at even starts.
        let cells = cfg.valid_cells();
        assert_eq!(cells.len(), 8 + 7 + 6 + 5 + 2 + 1);
        assert!(cells.contains(&(0, 5)) && cells.contains(&(2, 7)) && !cells.contains(&(1, 6)));
        assert_eq!(model.mask().sum(Kind::Float).double_value(&[]), cells.len() as f64);

        // The map cell (i, j) is the max over clips i..=j.
        let x = Tensor::from_slice(&[1.0f32, 5.0, 2.0, 0.0, 3.0, 4.0, 0.5, 6.0]).view([1, 1, 8]);
        let map = model.proposal_map(&x);
        assert_eq!(map.size(), [1, 1, 8, 8]);
        assert_eq!(map.double_value(&[0, 0, 2, 5]), 4.0);
        assert_eq!(map.double_value(&[0, 0, 0, 5]), 5.0);
        assert_eq!(map.double_value(&[0, 0, 2, 7]), 6.0);
        assert_eq!(map.double_value(&[0, 0, 1, 6]), 0.0, "not a candidate");

        let video = Tensor::randn([3, 32, 6], (Kind::Float, Device::Cpu));
        let sentence = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        let logits = model.forward(&video, &sentence);
        assert_eq!(logits.size(), [3, 8, 8]);
        let ranked = model.rank(&logits, &[8.0, 16.0, 4.0], 5);
        assert!(ranked.iter().all(|r| !r.is_empty() && r.len() <= 5));
        assert!(ranked[1].iter().all(|m| m.0 >= 0.0 && m.1 <= 16.0 && m.0 < m.1));
    }

    #[test]
    fn targets_scale_iou_between_the_preset_bounds() {
        let cfg = TanPreset::CharadesSta.config(1, 1);
        let t = cfg.target_map((0.0, 4.0), 16.0);
        // Cell (0, 3) is exactly the truth; (0, 1) has IoU 0.5 (target 0);
        // (0, 4) has IoU 0.8 (target 0.6).
        assert_eq!(t[3], 1.0);
        assert_eq!(t[1], 0.0);
        assert!((t[4] - 0.6).abs() < 1e-6);
        // TACoS scales between 0.3 and 0.7: cell (0, 1) of a 128 s video is
        // [0, 2] s, IoU 0.5 with [0, 4] s, target 0.5.
        let tacos = TanPreset::Tacos.config(1, 1);
        assert!((tacos.target_map((0.0, 4.0), 128.0)[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn the_loss_falls_on_a_tiny_synthetic_task() {
        // Each video is N clips of one of two "scenes" (feature directions);
        // the sentence names which scene to find.
        tch::manual_seed(0);
        let cfg = TanConfig { clips: 8, pooling_counts: vec![8], ..tiny(TanPreset::CharadesSta) };
        let model = Tan::new(&cfg, Device::Cpu, 1).unwrap();
        let mut adam = Adam::new(&model.vs);
        let (mut videos, mut sentences, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for q in 0..8 {
            let cut = 2 + q % 5;
            let mut rows = vec![0f32; 32 * 6];
            for r in 0..32 {
                let scene = usize::from(r * 8 / 32 >= cut);
                rows[r * 6 + scene] = 1.0;
                rows[r * 6 + 2 + q % 3] = 0.3;
            }
            videos.push(Tensor::from_slice(&rows).view([32, 6]));
            let wanted = q % 2;
            let mut s = vec![0f32; 5];
            s[wanted] = 1.0;
            sentences.push(Tensor::from_slice(&s));
            let truth = if wanted == 0 { (0.0, cut as f64) } else { (cut as f64, 8.0) };
            targets.push(Tensor::from_slice(&cfg.target_map(truth, 8.0)).view([8, 8]));
        }
        let (v, s, t) = (Tensor::stack(&videos, 0), Tensor::stack(&sentences, 0), Tensor::stack(&targets, 0));
        let loss = |m: &Tan| tch::no_grad(|| m.loss(&m.forward(&v, &s), &t).double_value(&[]));
        let before = loss(&model);
        for _ in 0..60 {
            let l = model.loss(&model.forward(&v, &s), &t);
            l.backward();
            clip_grad_norm(&model.vs, 10.0);
            adam.step(&model.vs, 3e-3);
            zero_gradients(&model.vs);
        }
        let after = loss(&model);
        assert!(before.is_finite() && after < 0.7 * before, "loss {before} -> {after}");
    }

    #[test]
    fn gradient_clipping_bounds_the_joint_norm() {
        let model = Tan::new(&tiny(TanPreset::CharadesSta), Device::Cpu, 2).unwrap();
        let v = Tensor::randn([2, 32, 6], (Kind::Float, Device::Cpu)) * 50.0;
        let s = Tensor::randn([2, 5], (Kind::Float, Device::Cpu)) * 50.0;
        let t = Tensor::ones([2, 16, 16], (Kind::Float, Device::Cpu));
        (model.loss(&model.forward(&v, &s), &t) * 1e4).backward();
        let before = clip_grad_norm(&model.vs, 0.5);
        assert!(before > 0.5, "{before}");
        let after = clip_grad_norm(&model.vs, 1e9);
        assert!((after - 0.5).abs() < 1e-3, "{after}");
    }
}
