//! The trainable heads of LocVTP (locvtp-method.md section 2): projection
//! heads into the joint space, the temporal-offset encoders and the splice
//! predictor. Names follow the released checkpoint.

use crate::init::xavier_linear;
use tch::nn::{self, Module};
use tch::Tensor;

/// `LayerNorm(Dropout(Linear(GELU(p))) + p)` with `p = Linear(x)`.
#[derive(Debug)]
pub struct ProjectionHead {
    projection: nn::Linear,
    fc: nn::Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl ProjectionHead {
    pub fn new(vs: &nn::Path, d_in: i64, d_out: i64, dropout: f64) -> Self {
        ProjectionHead {
            projection: xavier_linear(vs / "projection", d_in, d_out),
            fc: xavier_linear(vs / "fc", d_out, d_out),
            layer_norm: nn::layer_norm(vs / "layer_norm", vec![d_out], Default::default()),
            dropout,
        }
    }

    /// Projects the last dimension; dropout is active only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let p = self.projection.forward(x);
        let h = self.fc.forward(&p.gelu("none")).dropout(self.dropout, train);
        self.layer_norm.forward(&(h + p))
    }
}

/// The four `Linear(1, D)` encoders of an index offset's sign and size.
#[derive(Debug)]
pub struct ContextProjections {
    pub sign_word: nn::Linear,
    pub dist_word: nn::Linear,
    pub sign_vid: nn::Linear,
    pub dist_vid: nn::Linear,
}

impl ContextProjections {
    pub fn new(root: &nn::Path, dim: i64) -> Self {
        ContextProjections {
            sign_word: xavier_linear(root / "signProjWord", 1, dim),
            dist_word: xavier_linear(root / "distProjWord", 1, dim),
            sign_vid: xavier_linear(root / "signProjVid", 1, dim),
            dist_vid: xavier_linear(root / "distProjVid", 1, dim),
        }
    }

    /// Embedding of offsets `d` (any shape, integer or float) on the word
    /// side: `signProjWord(sign d) + distProjWord(|d|)`, shape `[..., D]`.
    pub fn word_offset(&self, d: &Tensor) -> Tensor {
        offset_embedding(&self.sign_word, &self.dist_word, d)
    }

    /// Same on the clip side with `signProjVid` / `distProjVid`.
    pub fn vid_offset(&self, d: &Tensor) -> Tensor {
        offset_embedding(&self.sign_vid, &self.dist_vid, d)
    }
}

fn offset_embedding(sign: &nn::Linear, dist: &nn::Linear, d: &Tensor) -> Tensor {
    // The layers' own kind, so that the offsets also work in a float64 model.
    let d = d.to_kind(sign.ws.kind()).unsqueeze(-1);
    sign.forward(&d.sign()) + dist.forward(&d.abs())
}

/// `Linear(T*D, T)`: predicts where a spliced sample was cut.
#[derive(Debug)]
pub struct SplicePredictor {
    f_cls: nn::Linear,
}

impl SplicePredictor {
    pub fn new(vs: &nn::Path, num_segments: i64, dim: i64) -> Self {
        SplicePredictor { f_cls: xavier_linear(vs / "f_cls", num_segments * dim, num_segments) }
    }

    /// `[B, T, D]` spliced embeddings to `[B, T]` cut logits.
    pub fn forward(&self, spliced: &Tensor) -> Tensor {
        self.f_cls.forward(&spliced.flatten(1, -1))
    }
}
