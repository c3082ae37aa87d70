//! The six LocVTP loss terms (locvtp-method.md section 3) as pure functions
//! of embeddings and explicit random draws: given the same embeddings and the
//! same [`Draws`], the losses are the same, whatever generator produced the
//! draws and on whichever worker.

use crate::heads::{ContextProjections, SplicePredictor};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Temperature of the fine-grained NCE terms.
pub const NCE_TEMPERATURE: f64 = 0.07;
/// Negatives per fine-grained query.
pub const NUM_NEGATIVES: i64 = 4;

/// Every random choice the losses make for one batch, as CPU `i64` tensors.
///
/// `B` samples, `T` segments, `N` word columns (the caption batch's padded
/// width). Entries that belong to padding (a word column past a caption's
/// length, or any word-side draw for a caption without words) are 0 and
/// never reach a loss.
#[derive(Debug)]
pub struct Draws {
    /// `[B]`: the sample whose tail each spliced sample takes; a derangement
    /// when `B > 1`.
    pub perm: Tensor,
    /// `[B]`: the cut `k_i` in `[0, T)`.
    pub cuts: Tensor,
    /// `[B, T, 4]`: negative words of each clip, uniform over the caption's
    /// real words.
    pub neg_words: Tensor,
    /// `[B, N, 4]`: negative clips of each word, uniform in `[0, T)`.
    pub neg_clips: Tensor,
    /// `[B, T]`: `s_t`, the context-warped word of each clip.
    pub ctx_words: Tensor,
    /// `[B, N]`: `r_n`, the context-warped clip of each word.
    pub ctx_clips: Tensor,
}

const DRAW_NAMES: [&str; 6] = ["perm", "cuts", "neg_words", "neg_clips", "ctx_words", "ctx_clips"];

impl Draws {
    /// Draws everything for a batch of `b` samples of `t` segments whose
    /// captions have `word_lens` real words. The word width is
    /// `max(1, max(word_lens))`, the width [`crate::text::TextBatch`] uses.
    ///
    /// Word-side draws for padding positions consume nothing from `rng`, so
    /// the draws of real words do not depend on how wide the batch is padded.
    pub fn sample<R: Rng + ?Sized>(b: i64, t: i64, word_lens: &[i64], rng: &mut R) -> Draws {
        let n = word_lens.iter().copied().max().unwrap_or(0).max(1);
        Self::sample_padded(b, t, n, word_lens, rng)
    }

    /// As [`Draws::sample`] with an explicit word width `n >= max(word_lens)`.
    pub fn sample_padded<R: Rng + ?Sized>(b: i64, t: i64, n: i64, word_lens: &[i64], rng: &mut R) -> Draws {
        assert!(b >= 1 && t >= 1, "a batch needs at least one sample and one segment (B = {b}, T = {t})");
        assert_eq!(word_lens.len() as i64, b, "one word count per sample");
        assert!(word_lens.iter().all(|&l| (0..=n).contains(&l)), "word counts {word_lens:?} must lie in [0, {n}]");
        let k = NUM_NEGATIVES;
        let (bu, tu, nu, ku) = (b as usize, t as usize, n as usize, k as usize);

        let mut perm: Vec<i64> = (0..b).collect();
        if b > 1 {
            // Rejection sampling: a uniform permutation is a derangement with
            // probability about 1/e, and accepting only those leaves every
            // derangement equally likely.
            loop {
                perm.shuffle(rng);
                if perm.iter().enumerate().all(|(i, &p)| p != i as i64) {
                    break;
                }
            }
        }
        let cuts: Vec<i64> = (0..b).map(|_| rng.random_range(0..t)).collect();

        let mut neg_words = vec![0i64; bu * tu * ku];
        for (bi, &len) in word_lens.iter().enumerate() {
            if len > 0 {
                for x in &mut neg_words[bi * tu * ku..(bi + 1) * tu * ku] {
                    *x = rng.random_range(0..len);
                }
            }
        }
        let mut neg_clips = vec![0i64; bu * nu * ku];
        for (bi, &len) in word_lens.iter().enumerate() {
            let start = bi * nu * ku;
            for x in &mut neg_clips[start..start + len as usize * ku] {
                *x = rng.random_range(0..t);
            }
        }
        let mut ctx_words = vec![0i64; bu * tu];
        for (bi, &len) in word_lens.iter().enumerate() {
            if len > 0 {
                for x in &mut ctx_words[bi * tu..(bi + 1) * tu] {
                    *x = rng.random_range(0..len);
                }
            }
        }
        let mut ctx_clips = vec![0i64; bu * nu];
        for (bi, &len) in word_lens.iter().enumerate() {
            for x in &mut ctx_clips[bi * nu..bi * nu + len as usize] {
                *x = rng.random_range(0..t);
            }
        }

        Draws {
            perm: Tensor::from_slice(&perm),
            cuts: Tensor::from_slice(&cuts),
            neg_words: Tensor::from_slice(&neg_words).reshape([b, t, k]),
            neg_clips: Tensor::from_slice(&neg_clips).reshape([b, n, k]),
            ctx_words: Tensor::from_slice(&ctx_words).reshape([b, t]),
            ctx_clips: Tensor::from_slice(&ctx_clips).reshape([b, n]),
        }
    }

    /// `(B, T, N)` as the tensors' shapes say.
    pub fn dims(&self) -> (i64, i64, i64) {
        let nc = self.neg_clips.size();
        (self.perm.size()[0], self.ctx_words.size()[1], nc[1])
    }

    fn fields(&self) -> [&Tensor; 6] {
        [&self.perm, &self.cuts, &self.neg_words, &self.neg_clips, &self.ctx_words, &self.ctx_clips]
    }

    /// The draws as `draws.<field>` tensors, for safetensors dumps.
    pub fn to_named_tensors(&self) -> Vec<(String, Tensor)> {
        DRAW_NAMES.iter().zip(self.fields()).map(|(n, t)| (format!("draws.{n}"), t.shallow_clone())).collect()
    }

    /// Reads the `draws.<field>` tensors back (other names are ignored) and
    /// checks their shapes and ranges.
    pub fn from_named_tensors(tensors: &[(String, Tensor)]) -> Result<Draws> {
        let get = |field: &str| -> Result<Tensor> {
            let name = format!("draws.{field}");
            let t = tensors
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("tensor {name} missing"))?;
            if t.is_floating_point() {
                bail!("tensor {name} holds {:?}, indices must be integers", t.kind());
            }
            Ok(t.to_kind(Kind::Int64).to_device(tch::Device::Cpu))
        };
        let d = Draws {
            perm: get("perm")?,
            cuts: get("cuts")?,
            neg_words: get("neg_words")?,
            neg_clips: get("neg_clips")?,
            ctx_words: get("ctx_words")?,
            ctx_clips: get("ctx_clips")?,
        };
        if d.perm.dim() != 1 || d.ctx_words.dim() != 2 || d.neg_clips.dim() != 3 {
            bail!("draws have the wrong number of dimensions");
        }
        let (b, t, n) = d.dims();
        d.check(b, t, n)?;
        Ok(d)
    }

    /// The same draws on `device`.
    pub fn to_device(&self, device: tch::Device) -> Draws {
        let [perm, cuts, neg_words, neg_clips, ctx_words, ctx_clips] = self.fields().map(|x| x.to_device(device));
        Draws { perm, cuts, neg_words, neg_clips, ctx_words, ctx_clips }
    }

    /// Checks shapes against a batch of `b` samples, `t` segments and `n`
    /// word columns, and that every index is in range.
    ///
    /// Index ranges and the permutation are checked for draws in host memory
    /// only: reading values back from a GPU would wait for all the work
    /// queued before (in training, C3D's forward pass). Draws are made on the
    /// host, and [`crate::train::forward_losses_t`] checks them there before
    /// moving them.
    pub fn check(&self, b: i64, t: i64, n: i64) -> Result<()> {
        let on_host = self.fields().iter().all(|x| x.device() == tch::Device::Cpu);
        let k = NUM_NEGATIVES;
        let expected: [(&str, &Tensor, Vec<i64>, i64); 6] = [
            ("perm", &self.perm, vec![b], b),
            ("cuts", &self.cuts, vec![b], t),
            ("neg_words", &self.neg_words, vec![b, t, k], n),
            ("neg_clips", &self.neg_clips, vec![b, n, k], t),
            ("ctx_words", &self.ctx_words, vec![b, t], n),
            ("ctx_clips", &self.ctx_clips, vec![b, n], t),
        ];
        for (name, tensor, shape, bound) in expected {
            if tensor.size() != shape {
                bail!(
                    "draws.{name} has shape {:?}, the batch needs {shape:?} (B = {b}, T = {t}, N = {n})",
                    tensor.size()
                );
            }
            if on_host && tensor.numel() > 0 {
                let lo = tensor.min().int64_value(&[]);
                let hi = tensor.max().int64_value(&[]);
                if lo < 0 || hi >= bound {
                    bail!("draws.{name} holds indices in [{lo}, {hi}], outside [0, {bound})");
                }
            }
        }
        if on_host {
            let mut seen: Vec<i64> = Vec::<i64>::try_from(&self.perm)?;
            seen.sort_unstable();
            if seen != (0..b).collect::<Vec<_>>() {
                bail!("draws.perm is not a permutation of 0..{b}");
            }
        }
        Ok(())
    }
}

/// Sample `i` of the result keeps segments `0..k_i` of sample `i` and takes
/// segments `k_i..T` of sample `perm(i)`. `clips` is `[B, T, ...]` of any
/// kind: raw u8 segments, clip features or embeddings.
pub fn splice_samples(clips: &Tensor, draws: &Draws) -> Tensor {
    let size = clips.size();
    assert!(size.len() >= 2, "splice_samples needs [B, T, ...], got {size:?}");
    let (b, t) = (size[0], size[1]);
    assert_eq!(draws.perm.size(), vec![b], "one permutation entry per sample");
    let dev = clips.device();
    let perm = draws.perm.to_device(dev);
    let cuts = draws.cuts.to_device(dev);
    let other = clips.index_select(0, &perm);
    let keep = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0).lt_tensor(&cuts.unsqueeze(1));
    let mut keep_shape = vec![b, t];
    keep_shape.resize(size.len(), 1);
    clips.where_self(&keep.reshape(keep_shape), &other)
}

/// The embeddings the losses read; all on one device, one float kind.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// `[B, T, D]` projected clip embeddings.
    pub v: &'a Tensor,
    /// `[B, D]` projected sentence embeddings.
    pub s: &'a Tensor,
    /// `[B, N, D]` projected word embeddings (padding columns may hold
    /// anything finite).
    pub w: &'a Tensor,
    /// `[B, N]`, bool or float, true / 1 for a real word.
    pub word_mask: &'a Tensor,
    /// `[B, T, D]` embeddings of the spliced samples.
    pub v_spliced: &'a Tensor,
}

/// Weights of the total loss and the coarse temperature; the released
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    /// Coarse temperature `tau` (MODEL.CLIP.LOSS.TEMPERATURE).
    pub tau: f64,
    /// `w_splice` (SHIFTWEIGHT).
    pub splice: f64,
    /// `w_fg` (FGWEIGHT), applied to each of the four fine-grained terms.
    pub fg: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights { tau: 1.0, splice: 1.0, fg: 10.0 }
    }
}

/// The six terms, their weighted total and the intermediates an inspection
/// dump wants. The terms and `total` carry gradients; everything else is
/// detached.
#[derive(Debug)]
pub struct LossTerms {
    pub coarse: Tensor,
    pub splice: Tensor,
    pub fg_vid: Tensor,
    pub fg_word: Tensor,
    pub fg_vid_ctx: Tensor,
    pub fg_word_ctx: Tensor,
    pub total: Tensor,
    /// `[B, T, N]` clip-to-word attention, 0 at padding.
    pub a: Tensor,
    /// `[B, T]` `p_t`, the positive word of each clip.
    pub pos_words: Tensor,
    /// `[B, N]` `q_n`, the positive clip of each word (0 at padding).
    pub pos_clips: Tensor,
    /// Further detached intermediates: logits and targets of every term and
    /// the query masks of the fine-grained terms.
    pub details: Vec<(String, Tensor)>,
}

impl LossTerms {
    /// The six terms and the total as `(name, value)`, for logging.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        self.terms().into_iter().map(|(n, t)| (n, t.double_value(&[]))).collect()
    }

    fn terms(&self) -> [(&'static str, &Tensor); 7] {
        [
            ("coarse", &self.coarse),
            ("splice", &self.splice),
            ("fg_vid", &self.fg_vid),
            ("fg_word", &self.fg_word),
            ("fg_vid_ctx", &self.fg_vid_ctx),
            ("fg_word_ctx", &self.fg_word_ctx),
            ("total", &self.total),
        ]
    }

    /// Every term (`loss.<term>`) and intermediate by name, detached.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> =
            self.terms().into_iter().map(|(n, t)| (format!("loss.{n}"), t.detach())).collect();
        out.push(("a".into(), self.a.detach()));
        out.push(("pos_words".into(), self.pos_words.shallow_clone()));
        out.push(("pos_clips".into(), self.pos_clips.shallow_clone()));
        out.extend(self.details.iter().map(|(n, t)| (n.clone(), t.detach())));
        out
    }
}

/// x / max(|x|, 1e-12) over the last dimension, as `F.normalize`.
fn l2_normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12)
}

/// `x[b, idx[b, ...]]` for `x` `[B, L, D]` and `idx` `[B, ...]`: `[B, ..., D]`.
fn gather_rows(x: &Tensor, idx: &Tensor) -> Tensor {
    let isz = idx.size();
    let (b, d) = (x.size()[0], x.size()[2]);
    let flat = idx.reshape([b, -1]);
    let m = flat.size()[1];
    let rows = x.gather(1, &flat.unsqueeze(-1).expand([b, m, d], false), false);
    let mut shape = isz;
    shape.push(d);
    rows.reshape(shape)
}

/// InfoNCE with target 0: queries `q` `[..., D]`, keys `k` `[..., D]`,
/// negatives `[..., K, D]`; the mean over the queries where `valid` holds
/// (0 when none does). Returns the loss and the detached logits `[..., 1+K]`.
fn nce(q: &Tensor, k: &Tensor, negs: &Tensor, valid: &Tensor) -> (Tensor, Tensor) {
    let q = l2_normalise(q);
    let k = l2_normalise(k);
    let negs = l2_normalise(negs);
    let pos = (&q * &k).sum_dim_intlist(-1, true, None);
    let neg = (&negs * q.unsqueeze(-2)).sum_dim_intlist(-1, false, None);
    let logits = Tensor::cat(&[pos, neg], -1) / NCE_TEMPERATURE;
    let nll = -logits.log_softmax(-1, None).select(-1, 0);
    let count = valid.to_kind(nll.kind()).sum(None).clamp_min(1.0);
    let loss = nll.masked_fill(&valid.logical_not(), 0.0).sum(None) / count;
    (loss, logits.detach())
}

/// The coarse video-sentence loss, its logits and soft targets.
fn coarse_loss(v: &Tensor, s: &Tensor, tau: f64) -> (Tensor, Tensor, Tensor) {
    let vbar = v.mean_dim(1, false, None);
    let logits = s.matmul(&vbar.tr()) / tau;
    let targets = ((vbar.matmul(&vbar.tr()) + s.matmul(&s.tr())) / 2.0 * tau).softmax(-1, None);
    let soft_ce = |logits: &Tensor, targets: &Tensor| {
        -(targets * logits.log_softmax(-1, None)).sum_dim_intlist(-1, false, None).mean(None)
    };
    let l_text = soft_ce(&logits, &targets);
    let l_video = soft_ce(&logits.tr(), &targets.tr());
    ((l_text + l_video) / 2.0, logits.detach(), targets.detach())
}

/// `softmax over real words (V @ W^T)`, `[B, T, N]`, 0 at padding and for
/// captions without words.
fn attention(v: &Tensor, w: &Tensor, mask: &Tensor) -> Tensor {
    let pad = mask.logical_not().unsqueeze(1);
    // A row with no real word is all -inf and softmaxes to NaN; the second
    // fill overwrites that whole row with 0.
    v.matmul(&w.transpose(1, 2)).masked_fill(&pad, f64::NEG_INFINITY).softmax(-1, None).masked_fill(&pad, 0.0)
}

/// The six LocVTP losses and their weighted total (locvtp-method.md
/// section 3).
///
/// Panics when the shapes of `inputs` and `draws` disagree: both come from
/// the same batch, so a mismatch is a programming error.
pub fn locvtp_losses(
    model_heads: (&SplicePredictor, &ContextProjections),
    inputs: &LossInputs,
    draws: &Draws,
    weights: &LossWeights,
) -> LossTerms {
    let (splice_head, context) = model_heads;
    let LossInputs { v, s, w, word_mask, v_spliced } = *inputs;
    let (b, t, d) = v.size3().expect("V must be [B, T, D]");
    let (wb, n, wd) = w.size3().expect("W must be [B, N, D]");
    assert_eq!(s.size(), vec![b, d], "S must be [B, D] with V [B, T, D] = {:?}", v.size());
    assert_eq!((wb, wd), (b, d), "W {:?} does not match V {:?}", w.size(), v.size());
    assert_eq!(word_mask.size(), vec![b, n], "word_mask must be [B, N]");
    assert_eq!(v_spliced.size(), vec![b, t, d], "V' must be shaped as V");
    if let Err(e) = draws.check(b, t, n) {
        panic!("draws do not fit the batch: {e}");
    }

    let dev = v.device();
    let on_dev = |x: &Tensor| x.to_device(dev);
    let mask = on_dev(word_mask).to_kind(Kind::Bool);

    let (coarse, coarse_logits, coarse_targets) = coarse_loss(v, s, weights.tau);

    let splice_logits = splice_head.forward(v_spliced);
    // Not `cross_entropy_for_logits`: that one computes in float32 whatever
    // the input kind, which would break float64 gradient checks.
    let splice = splice_logits.log_softmax(-1, None).nll_loss(&on_dev(&draws.cuts));

    // The arg-maxes carry no gradient, so neither does A.
    let (a, pos_words, pos_clips) = tch::no_grad(|| {
        let a = attention(&v.detach(), &w.detach(), &mask);
        // Attention at a real word is >= 0, so -1 keeps padding out of the
        // arg-max; ties go to the first index, as in PyTorch.
        let pos_words = a.masked_fill(&mask.logical_not().unsqueeze(1), -1.0).argmax(-1, false);
        let pos_clips = a.argmax(1, false).masked_fill(&mask.logical_not(), 0);
        (a, pos_words, pos_clips)
    });

    let clip_valid = mask.any_dim(1, true).expand([b, t], false);
    let neg_words = gather_rows(w, &on_dev(&draws.neg_words));
    let neg_clips = gather_rows(v, &on_dev(&draws.neg_clips));

    let (fg_vid, fg_vid_logits) = nce(v, &gather_rows(w, &pos_words), &neg_words, &clip_valid);
    let (fg_word, fg_word_logits) = nce(w, &gather_rows(v, &pos_clips), &neg_clips, &mask);

    let s_t = on_dev(&draws.ctx_words);
    let key = gather_rows(w, &s_t) + context.word_offset(&(&s_t - &pos_words));
    let (fg_vid_ctx, fg_vid_ctx_logits) = nce(v, &key, &neg_words, &clip_valid);

    let r_n = on_dev(&draws.ctx_clips);
    let key = gather_rows(v, &r_n) + context.vid_offset(&(&r_n - &pos_clips));
    let (fg_word_ctx, fg_word_ctx_logits) = nce(w, &key, &neg_clips, &mask);

    let total = &coarse + &splice * weights.splice + (&fg_vid + &fg_word + &fg_vid_ctx + &fg_word_ctx) * weights.fg;

    let details = vec![
        ("coarse.logits".to_string(), coarse_logits),
        ("coarse.targets".to_string(), coarse_targets),
        ("splice.logits".to_string(), splice_logits.detach()),
        ("fg_vid.logits".to_string(), fg_vid_logits),
        ("fg_word.logits".to_string(), fg_word_logits),
        ("fg_vid_ctx.logits".to_string(), fg_vid_ctx_logits),
        ("fg_word_ctx.logits".to_string(), fg_word_ctx_logits),
        ("fg.clip_valid".to_string(), clip_valid.to_kind(Kind::Uint8)),
        ("fg.word_valid".to_string(), mask.to_kind(Kind::Uint8)),
    ];
    LossTerms { coarse, splice, fg_vid, fg_word, fg_vid_ctx, fg_word_ctx, total, a, pos_words, pos_clips, details }
}

/// Runs `f` with libtorch's global generator seeded, holding the lock that
/// [`crate::LocVtp::new`] holds, so that tests drawing random tensors in
/// parallel neither disturb nor are disturbed by model initialisation.
#[cfg(test)]
pub(crate) fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = crate::INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::{nn, Device};

    const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

    /// Heads in float64 and the embeddings of one batch.
    struct Case {
        _vs: nn::VarStore,
        splice: SplicePredictor,
        ctx: ContextProjections,
        v: Tensor,
        s: Tensor,
        w: Tensor,
        mask: Tensor,
        vsp: Tensor,
        lens: Vec<i64>,
        draws: Draws,
    }

    fn case(t: i64, d: i64, lens: &[i64], seed: u64) -> Case {
        let b = lens.len() as i64;
        let n = lens.iter().copied().max().unwrap().max(1);
        let mask_rows: Vec<Vec<bool>> = lens.iter().map(|&l| (0..n).map(|j| j < l).collect()).collect();
        let mask = Tensor::from_slice(&mask_rows.concat()).reshape([b, n]);
        let draws = Draws::sample(b, t, lens, &mut ChaCha8Rng::seed_from_u64(seed));
        seeded(seed as i64, || {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let splice = SplicePredictor::new(&(vs.root() / "shiftpredict"), t, d);
            let ctx = ContextProjections::new(&vs.root(), d);
            vs.double();
            Case {
                _vs: vs,
                splice,
                ctx,
                v: Tensor::randn([b, t, d], F64),
                s: Tensor::randn([b, d], F64),
                w: Tensor::randn([b, n, d], F64),
                mask,
                vsp: Tensor::randn([b, t, d], F64),
                lens: lens.to_vec(),
                draws,
            }
        })
    }

    fn losses_of(c: &Case, v: &Tensor, s: &Tensor, w: &Tensor, weights: &LossWeights) -> LossTerms {
        let inputs = LossInputs { v, s, w, word_mask: &c.mask, v_spliced: &c.vsp };
        locvtp_losses((&c.splice, &c.ctx), &inputs, &c.draws, weights)
    }

    fn run(c: &Case) -> LossTerms {
        losses_of(c, &c.v, &c.s, &c.w, &LossWeights::default())
    }

    fn f3(t: &Tensor) -> Vec<Vec<Vec<f64>>> {
        Vec::try_from(&t.to_kind(Kind::Double)).unwrap()
    }
    fn f2(t: &Tensor) -> Vec<Vec<f64>> {
        Vec::try_from(&t.to_kind(Kind::Double)).unwrap()
    }
    fn i3(t: &Tensor) -> Vec<Vec<Vec<i64>>> {
        Vec::try_from(t).unwrap()
    }
    fn i2(t: &Tensor) -> Vec<Vec<i64>> {
        Vec::try_from(t).unwrap()
    }
    fn i1(t: &Tensor) -> Vec<i64> {
        Vec::try_from(t).unwrap()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    fn log_softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        z.iter().map(|x| x - lse).collect()
    }
    fn argmax_first(z: &[f64]) -> usize {
        let mut best = 0;
        for (i, &x) in z.iter().enumerate() {
            if x > z[best] {
                best = i;
            }
        }
        best
    }
    fn unit(a: &[f64]) -> Vec<f64> {
        let n = dot(a, a).sqrt().max(1e-12);
        a.iter().map(|x| x / n).collect()
    }
    fn nce_ref(q: &[f64], k: &[f64], negs: &[Vec<f64>]) -> f64 {
        let q = unit(q);
        let mut z = vec![dot(&q, &unit(k)) / 0.07];
        z.extend(negs.iter().map(|n| dot(&q, &unit(n)) / 0.07));
        -log_softmax(&z)[0]
    }
    fn sign(x: f64) -> f64 {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    }
    fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x + y).collect()
    }

    /// `Linear(1, D)` pair as plain vectors: (sign weight, sign bias, dist
    /// weight, dist bias).
    fn offset_ref(sign_l: &nn::Linear, dist_l: &nn::Linear, d: i64) -> Vec<f64> {
        let col = |l: &nn::Linear| Vec::<f64>::try_from(&l.ws.reshape([-1])).unwrap();
        let bias = |l: &nn::Linear| Vec::<f64>::try_from(l.bs.as_ref().unwrap()).unwrap();
        let (sw, sb, dw, db) = (col(sign_l), bias(sign_l), col(dist_l), bias(dist_l));
        let d = d as f64;
        (0..sw.len()).map(|j| sw[j] * sign(d) + sb[j] + dw[j] * d.abs() + db[j]).collect()
    }

    /// The six terms computed with plain loops over f64, independently of
    /// the tensor code: [coarse, splice, fg_vid, fg_word, fg_vid_ctx,
    /// fg_word_ctx].
    fn reference(c: &Case, tau: f64) -> [f64; 6] {
        let (v, s, w, vsp) = (f3(&c.v), f2(&c.s), f3(&c.w), f3(&c.vsp));
        let b = v.len();
        let t = v[0].len();
        let dd = s[0].len();

        // Coarse.
        let vbar: Vec<Vec<f64>> =
            v.iter().map(|segs| (0..dd).map(|j| segs.iter().map(|x| x[j]).sum::<f64>() / t as f64).collect()).collect();
        let logits: Vec<Vec<f64>> = (0..b).map(|i| (0..b).map(|j| dot(&s[i], &vbar[j]) / tau).collect()).collect();
        let targets: Vec<Vec<f64>> = (0..b)
            .map(|i| {
                let sim: Vec<f64> = (0..b).map(|j| (dot(&vbar[i], &vbar[j]) + dot(&s[i], &s[j])) / 2.0 * tau).collect();
                log_softmax(&sim).iter().map(|x| x.exp()).collect()
            })
            .collect();
        let mut l_text = 0.0;
        let mut l_video = 0.0;
        for i in 0..b {
            let row = log_softmax(&logits[i]);
            let col: Vec<f64> = (0..b).map(|j| logits[j][i]).collect();
            let col = log_softmax(&col);
            for j in 0..b {
                l_text -= targets[i][j] * row[j];
                l_video -= targets[j][i] * col[j];
            }
        }
        let coarse = (l_text / b as f64 + l_video / b as f64) / 2.0;

        // Splice.
        let vars = c._vs.variables();
        let fw = f2(&vars["shiftpredict.f_cls.weight"]);
        let fb = Vec::<f64>::try_from(&vars["shiftpredict.f_cls.bias"]).unwrap();
        let cuts = i1(&c.draws.cuts);
        let mut splice = 0.0;
        for i in 0..b {
            let flat: Vec<f64> = vsp[i].concat();
            let z: Vec<f64> = (0..t).map(|k| fb[k] + dot(&fw[k], &flat)).collect();
            splice -= log_softmax(&z)[cuts[i] as usize];
        }
        splice /= b as f64;

        // Attention and positives over real words only.
        let mut a = vec![vec![Vec::<f64>::new(); t]; b];
        let mut p = vec![vec![0usize; t]; b];
        let mut q = vec![Vec::<usize>::new(); b];
        for bi in 0..b {
            let len = c.lens[bi] as usize;
            if len == 0 {
                continue;
            }
            for ti in 0..t {
                let z: Vec<f64> = (0..len).map(|n| dot(&v[bi][ti], &w[bi][n])).collect();
                a[bi][ti] = log_softmax(&z).iter().map(|x| x.exp()).collect();
                p[bi][ti] = argmax_first(&a[bi][ti]);
            }
            q[bi] = (0..len).map(|n| argmax_first(&(0..t).map(|ti| a[bi][ti][n]).collect::<Vec<_>>())).collect();
        }

        let neg_words = i3(&c.draws.neg_words);
        let neg_clips = i3(&c.draws.neg_clips);
        let ctx_words = i2(&c.draws.ctx_words);
        let ctx_clips = i2(&c.draws.ctx_clips);
        let (mut fv, mut fw_, mut fvc, mut fwc) = (0.0, 0.0, 0.0, 0.0);
        let (mut nv, mut nw) = (0usize, 0usize);
        for bi in 0..b {
            let len = c.lens[bi] as usize;
            if len == 0 {
                continue;
            }
            for ti in 0..t {
                let negs: Vec<Vec<f64>> = neg_words[bi][ti].iter().map(|&j| w[bi][j as usize].clone()).collect();
                fv += nce_ref(&v[bi][ti], &w[bi][p[bi][ti]], &negs);
                let st = ctx_words[bi][ti];
                let off = offset_ref(&c.ctx.sign_word, &c.ctx.dist_word, st - p[bi][ti] as i64);
                fvc += nce_ref(&v[bi][ti], &add(&w[bi][st as usize], &off), &negs);
                nv += 1;
            }
            for n in 0..len {
                let negs: Vec<Vec<f64>> = neg_clips[bi][n].iter().map(|&j| v[bi][j as usize].clone()).collect();
                fw_ += nce_ref(&w[bi][n], &v[bi][q[bi][n]], &negs);
                let rn = ctx_clips[bi][n];
                let off = offset_ref(&c.ctx.sign_vid, &c.ctx.dist_vid, rn - q[bi][n] as i64);
                fwc += nce_ref(&w[bi][n], &add(&v[bi][rn as usize], &off), &negs);
                nw += 1;
            }
        }
        let (nv, nw) = (nv as f64, nw as f64);
        [coarse, splice, fv / nv, fw_ / nw, fvc / nv, fwc / nw]
    }

    fn six(l: &LossTerms) -> [f64; 6] {
        [&l.coarse, &l.splice, &l.fg_vid, &l.fg_word, &l.fg_vid_ctx, &l.fg_word_ctx].map(|x| x.double_value(&[]))
    }

    #[test]
    fn each_term_matches_a_loop_reference() {
        // Captions of 3, 0 and 2 words: padding and a caption without words.
        for (seed, tau) in [(1u64, 1.0), (2, 0.5)] {
            let c = case(3, 4, &[3, 0, 2, 1], seed);
            let weights = LossWeights { tau, splice: 0.7, fg: 3.0 };
            let l = losses_of(&c, &c.v, &c.s, &c.w, &weights);
            let got = six(&l);
            let want = reference(&c, tau);
            let names = ["coarse", "splice", "fg_vid", "fg_word", "fg_vid_ctx", "fg_word_ctx"];
            for i in 0..6 {
                assert!((got[i] - want[i]).abs() < 1e-10, "{}: {} vs reference {}", names[i], got[i], want[i]);
            }
            let total = want[0] + 0.7 * want[1] + 3.0 * (want[2] + want[3] + want[4] + want[5]);
            assert!((l.total.double_value(&[]) - total).abs() < 1e-9);
            // Every term of the released defaults is positive and finite.
            assert!(got.iter().all(|x| x.is_finite() && *x > 0.0), "{got:?}");
        }
    }

    #[test]
    fn equal_length_captions_match_the_reference_too() {
        let c = case(4, 3, &[2, 2, 2], 5);
        let got = six(&run(&c));
        let want = reference(&c, 1.0);
        for i in 0..6 {
            assert!((got[i] - want[i]).abs() < 1e-10, "term {i}: {} vs {}", got[i], want[i]);
        }
    }

    /// Central differences of `f` at `x` against the gradient autograd gives.
    fn check_gradient(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor, what: &str) {
        let xg = x.detach().set_requires_grad(true);
        f(&xg).backward();
        let analytic = Vec::<f64>::try_from(&xg.grad().reshape([-1])).unwrap();
        let flat = x.detach().reshape([-1]);
        let h = 1e-6;
        for (i, &g) in analytic.iter().enumerate() {
            let at = |delta: f64| {
                let y = flat.copy();
                let _ = y.get(i as i64).fill_(flat.double_value(&[i as i64]) + delta);
                tch::no_grad(|| f(&y.reshape(x.size())).double_value(&[]))
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let tol = 1e-6 + 1e-5 * numeric.abs();
            assert!((numeric - g).abs() < tol, "{what}: d/dx[{i}] autograd {g} vs finite difference {numeric}");
        }
        assert!(analytic.iter().any(|g| g.abs() > 1e-6), "{what}: gradient is zero");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let c = case(3, 4, &[3, 2, 3], 11);
        let w8 = LossWeights::default();
        check_gradient(&c.v, &|v| losses_of(&c, v, &c.s, &c.w, &w8).coarse, "coarse wrt V");
        check_gradient(&c.s, &|s| losses_of(&c, &c.v, s, &c.w, &w8).coarse, "coarse wrt S");
        check_gradient(&c.v, &|v| losses_of(&c, v, &c.s, &c.w, &w8).fg_vid_ctx, "fg_vid_ctx wrt V");
        check_gradient(&c.w, &|w| losses_of(&c, &c.v, &c.s, w, &w8).fg_vid_ctx, "fg_vid_ctx wrt W");
        check_gradient(&c.v, &|v| losses_of(&c, v, &c.s, &c.w, &w8).fg_word, "fg_word wrt V");
        check_gradient(&c.w, &|w| losses_of(&c, &c.v, &c.s, w, &w8).fg_word_ctx, "fg_word_ctx wrt W");
        let splice = |vsp: &Tensor| {
            let inputs = LossInputs { v: &c.v, s: &c.s, w: &c.w, word_mask: &c.mask, v_spliced: vsp };
            locvtp_losses((&c.splice, &c.ctx), &inputs, &c.draws, &w8).splice
        };
        check_gradient(&c.vsp, &splice, "splice wrt V'");
    }

    #[test]
    fn padding_words_change_nothing() {
        let c = case(3, 4, &[3, 1, 0, 2], 21);
        let base = run(&c);
        let (b, n, d) = c.w.size3().unwrap();
        let extra = 2;
        // Garbage in the existing padding and in two more padding columns.
        let garbage = seeded(1, || Tensor::randn([b, n + extra, d], F64)) * 100.0;
        let mask_wide = Tensor::cat(&[c.mask.shallow_clone(), Tensor::zeros([b, extra], (Kind::Bool, Device::Cpu))], 1);
        let w_wide = Tensor::cat(&[c.w.shallow_clone(), Tensor::zeros([b, extra, d], F64)], 1)
            .where_self(&mask_wide.unsqueeze(-1), &garbage);
        let pad_idx = |x: &Tensor, shape: Vec<i64>| {
            let junk = seeded(2, || Tensor::randint(3, shape, (Kind::Int64, Device::Cpu)));
            Tensor::cat(&[x.shallow_clone(), junk], 1)
        };
        let draws = Draws {
            perm: c.draws.perm.copy(),
            cuts: c.draws.cuts.copy(),
            neg_words: c.draws.neg_words.copy(),
            neg_clips: pad_idx(&c.draws.neg_clips, vec![b, extra, NUM_NEGATIVES]),
            ctx_words: c.draws.ctx_words.copy(),
            ctx_clips: pad_idx(&c.draws.ctx_clips, vec![b, extra]),
        };
        let inputs = LossInputs { v: &c.v, s: &c.s, w: &w_wide, word_mask: &mask_wide, v_spliced: &c.vsp };
        let wide = locvtp_losses((&c.splice, &c.ctx), &inputs, &draws, &LossWeights::default());
        let (x, y) = (six(&base), six(&wide));
        for i in 0..6 {
            assert!((x[i] - y[i]).abs() < 1e-12, "term {i}: {} with padding garbage, {} without", y[i], x[i]);
        }
        // A is zero at padding, and positives never point at padding.
        let pad = mask_wide.logical_not().unsqueeze(1).expand([b, 3, n + extra], false);
        assert_eq!(wide.a.masked_select(&pad).abs().sum(None).double_value(&[]), 0.0);
        let lens = Tensor::from_slice(&c.lens).unsqueeze(1);
        let real = lens.gt(0).expand([b, 3], false);
        assert!(bool::try_from(wide.pos_words.lt_tensor(&lens).logical_or(&real.logical_not()).all()).unwrap());
        assert!(wide.pos_words.equal(&base.pos_words));
    }

    #[test]
    fn captions_without_words_give_finite_losses() {
        let c = case(2, 3, &[0, 0], 3);
        let l = run(&c);
        assert!(six(&l).iter().all(|x| x.is_finite()));
        assert_eq!(l.fg_vid.double_value(&[]), 0.0);
        assert_eq!(l.fg_word_ctx.double_value(&[]), 0.0);
    }

    #[test]
    fn permutations_are_derangements_and_draws_stay_in_range() {
        for b in 1..=7i64 {
            for seed in 0..40u64 {
                let lens: Vec<i64> = (0..b).map(|i| (i * 3 + seed as i64) % 5).collect();
                let t = 1 + (seed as i64 % 4);
                let d = Draws::sample(b, t, &lens, &mut ChaCha8Rng::seed_from_u64(seed));
                let perm = i1(&d.perm);
                if b > 1 {
                    assert!(perm.iter().enumerate().all(|(i, &p)| p != i as i64), "fixed point in {perm:?}");
                } else {
                    assert_eq!(perm, vec![0]);
                }
                let n = lens.iter().copied().max().unwrap().max(1);
                d.check(b, t, n).unwrap();
                let (nw, cw, nc, cc) = (i3(&d.neg_words), i2(&d.ctx_words), i3(&d.neg_clips), i2(&d.ctx_clips));
                for (bi, &len) in lens.iter().enumerate() {
                    let bound = len.max(1);
                    assert!(nw[bi].iter().flatten().all(|&x| x < bound));
                    assert!(cw[bi].iter().all(|&x| x < bound));
                    for j in len as usize..n as usize {
                        assert!(nc[bi][j].iter().all(|&x| x == 0) && cc[bi][j] == 0, "padding draws must be 0");
                    }
                }
            }
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let lens = [4, 2, 5];
        let a = Draws::sample(3, 5, &lens, &mut ChaCha8Rng::seed_from_u64(9));
        let b = Draws::sample(3, 5, &lens, &mut ChaCha8Rng::seed_from_u64(9));
        let c = Draws::sample(3, 5, &lens, &mut ChaCha8Rng::seed_from_u64(10));
        for (x, y) in a.fields().iter().zip(b.fields()) {
            assert!(x.equal(y));
        }
        assert!(a.fields().iter().zip(c.fields()).any(|(x, y)| !x.equal(y)));
    }

    #[test]
    fn draws_round_trip_through_named_tensors() {
        let d = Draws::sample(3, 4, &[2, 3, 1], &mut ChaCha8Rng::seed_from_u64(1));
        let mut named = d.to_named_tensors();
        named.push(("unrelated".into(), Tensor::zeros([2], F64)));
        let back = Draws::from_named_tensors(&named).unwrap();
        for (x, y) in d.fields().iter().zip(back.fields()) {
            assert!(x.equal(y));
        }
        let bad: Vec<(String, Tensor)> = d
            .to_named_tensors()
            .into_iter()
            .map(|(n, t)| if n == "draws.perm" { (n, Tensor::from_slice(&[0i64, 0, 1])) } else { (n, t) })
            .collect();
        assert!(Draws::from_named_tensors(&bad).unwrap_err().to_string().contains("permutation"));
        assert!(Draws::from_named_tensors(&named[1..]).unwrap_err().to_string().contains("draws.perm"));
    }

    #[test]
    fn splicing_keeps_the_head_and_takes_the_tail() {
        let (b, t) = (3, 4);
        let clips = (Tensor::arange(b, (Kind::Int64, Device::Cpu)).unsqueeze(1) * 10
            + Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0))
        .unsqueeze(-1)
        .repeat([1, 1, 2]);
        let mut d = Draws::sample(b, t, &[1, 1, 1], &mut ChaCha8Rng::seed_from_u64(0));
        d.perm = Tensor::from_slice(&[1i64, 2, 0]);
        d.cuts = Tensor::from_slice(&[0i64, 2, 3]);
        let out = splice_samples(&clips, &d);
        let want: Vec<Vec<i64>> = vec![vec![10, 11, 12, 13], vec![10, 11, 22, 23], vec![20, 21, 22, 3]];
        assert_eq!(i2(&out.select(2, 1)), want);
        assert_eq!(out.size(), vec![3, 4, 2]);
    }

    #[test]
    fn inspection_names_every_term_and_intermediate() {
        let c = case(3, 4, &[3, 2], 4);
        let l = run(&c);
        let names: Vec<String> = l.named_tensors().into_iter().map(|(n, _)| n).collect();
        for want in [
            "loss.coarse",
            "loss.fg_word_ctx",
            "loss.total",
            "a",
            "pos_words",
            "pos_clips",
            "coarse.targets",
            "fg_vid.logits",
            "fg.word_valid",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inspect.safetensors");
        let mut all = l.named_tensors();
        all.extend(c.draws.to_named_tensors());
        crate::checkpoint::write_safetensors(&path, &all, &Default::default()).unwrap();
        let (back, _) = crate::checkpoint::read_safetensors(&path).unwrap();
        assert_eq!(back.len(), all.len());
        assert_eq!(l.values().len(), 7);
    }

    #[test]
    fn loss_weights_read_with_defaults_and_reject_unknown_keys() {
        let w: LossWeights = serde_json::from_str(r#"{"fg": 5.0}"#).unwrap();
        assert_eq!(w, LossWeights { tau: 1.0, splice: 1.0, fg: 5.0 });
        assert!(serde_json::from_str::<LossWeights>(r#"{"fgpos": 1.0}"#).is_err());
    }
}
