//! The LocVTP model on libtorch: C3D, projection heads, context projections,
//! splice predictor, the frozen text encoder, the six loss terms and
//! safetensors checkpoints; and the downstream grounding model (2D-TAN)
//! with the metrics and baselines it is reported with. This crate needs libtorch only (no FFmpeg, no
//! HDF5), so it runs alone on a GPU machine.

pub mod amp;
pub mod c3d;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod heads;
mod init;
pub mod loss;
pub mod memory;
pub mod moments;
pub mod tan;
pub mod text;
pub mod train;

pub use config::{C3dConfig, ConvInit, ModelConfig};
pub use device::Layer;

use std::sync::Mutex;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Every trainable part of LocVTP under one variable store, named as in the
/// released checkpoint (locvtp-method.md section 6). The frozen text encoder
/// lives apart: it is pretrained, never updated, and not part of the
/// checkpoints this project writes.
#[derive(Debug)]
pub struct LocVtp {
    pub vs: nn::VarStore,
    pub cfg: ModelConfig,
    pub c3d: c3d::C3d,
    pub vid_proj: heads::ProjectionHead,
    pub text_proj: heads::ProjectionHead,
    pub context: heads::ContextProjections,
    pub splice: heads::SplicePredictor,
}

/// libtorch's default generator is process-wide; building under this lock
/// makes the initial weights a function of the seed alone, even when several
/// workers of one process build their replicas at once.
static INIT_LOCK: Mutex<()> = Mutex::new(());

impl LocVtp {
    /// A freshly initialised model; the same `seed` gives the same weights.
    pub fn new(cfg: &ModelConfig, device: Device, seed: i64) -> Self {
        let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let d = cfg.projection_dim;
        let c3d = c3d::C3d::new(&(&root / "videoEncoder" / "embednet"), cfg);
        let vid_proj = heads::ProjectionHead::new(&(&root / "vidProjector"), cfg.c3d.fc_dim, d, cfg.dropout);
        let text_proj = heads::ProjectionHead::new(&(&root / "textProjector"), cfg.text_dim, d, cfg.dropout);
        let context = heads::ContextProjections::new(&root, d);
        let splice = heads::SplicePredictor::new(&(&root / "shiftpredict"), cfg.num_segments, d);
        LocVtp { vs, cfg: cfg.clone(), c3d, vid_proj, text_proj, context, splice }
    }

    /// Normalised clips `[N, 3, F, H, W]` to (fc6 `[N, fc_dim]`, projected
    /// `[N, D]`).
    pub fn encode_clips(&self, clips: &Tensor, train: bool) -> (Tensor, Tensor) {
        let fc6 = self.c3d.forward_fc6(clips);
        let projected = self.vid_proj.forward_t(&fc6, train);
        (fc6, projected)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// u8 frames `[N, F, H, W, 3]` (as decoded, channels last) to the network's
/// input `[N, 3, F, H, W]`, float in [-1, 1]: scale to [0, 1], then
/// normalise with mean 0.5 and std 0.5. Runs wherever `frames` lives, so
/// callers move the compact u8 tensor to the device first.
pub fn normalise_u8_clips(frames: &Tensor) -> Tensor {
    (frames.permute([0, 4, 1, 2, 3]).to_kind(Kind::Float) / 255.0 - 0.5) / 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig {
            c3d: C3dConfig { channels: [2, 4, 4, 8, 8], fc_dim: 16, num_classes: 5, ..C3dConfig::default() },
            projection_dim: 8,
            text_dim: 12,
            num_segments: 3,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn c3d_shapes_for_a_16_frame_clip() {
        let cfg = tiny();
        let m = LocVtp::new(&cfg, Device::Cpu, 0);
        let clips = Tensor::zeros([2, 3, 16, 112, 112], (Kind::Float, Device::Cpu));
        let (fc6, proj) = tch::no_grad(|| m.encode_clips(&clips, false));
        assert_eq!(fc6.size(), vec![2, 16]);
        assert_eq!(proj.size(), vec![2, 8]);
        assert_eq!(cfg.pool5_dim(), 8 * 4 * 4);
    }

    #[test]
    fn full_c3d_pool5_is_8192() {
        assert_eq!(ModelConfig::default().pool5_dim(), 8192);
    }

    #[test]
    fn checkpoint_names_follow_the_released_model() {
        let m = LocVtp::new(&tiny(), Device::Cpu, 0);
        let vars = m.vs.variables();
        for name in [
            "videoEncoder.embednet.conv1.weight",
            "videoEncoder.embednet.conv5b.bias",
            "videoEncoder.embednet.fc6.weight",
            "videoEncoder.embednet.fc8.bias",
            "vidProjector.projection.weight",
            "vidProjector.layer_norm.weight",
            "textProjector.fc.bias",
            "shiftpredict.f_cls.weight",
            "signProjWord.weight",
            "distProjVid.bias",
        ] {
            assert!(vars.contains_key(name), "missing {name}");
        }
        assert_eq!(vars["videoEncoder.embednet.conv2.weight"].size(), vec![4, 2, 3, 3, 3]);
        assert_eq!(vars["shiftpredict.f_cls.weight"].size(), vec![3, 3 * 8]);
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let a = LocVtp::new(&tiny(), Device::Cpu, 7);
        let b = LocVtp::new(&tiny(), Device::Cpu, 7);
        let c = LocVtp::new(&tiny(), Device::Cpu, 8);
        let name = "vidProjector.projection.weight";
        let (va, vb, vc) = (&a.vs.variables()[name], &b.vs.variables()[name], &c.vs.variables()[name]);
        assert!(va.equal(vb));
        assert!(!va.equal(vc));
    }

    #[test]
    fn xavier_bound_with_gain_sqrt2() {
        let m = LocVtp::new(&tiny(), Device::Cpu, 1);
        let w = &m.vs.variables()["vidProjector.projection.weight"];
        let bound = 2f64.sqrt() * (6.0f64 / (16.0 + 8.0)).sqrt();
        let max = w.abs().max().double_value(&[]);
        assert!(max <= bound && max > 0.5 * bound, "max {max} bound {bound}");
    }

    #[test]
    fn preprocessing_maps_known_colours_to_minus_one_one() {
        // One 2x2 frame: black, white, pure red, mid grey (128).
        let px: Vec<u8> = vec![0, 0, 0, 255, 255, 255, 255, 0, 0, 128, 128, 128];
        let frames = Tensor::from_slice(&px).reshape([1, 1, 2, 2, 3]);
        let x = normalise_u8_clips(&frames);
        assert_eq!(x.size(), vec![1, 3, 1, 2, 2]);
        let at = |c: i64, y: i64, xx: i64| x.double_value(&[0, c, 0, y, xx]);
        assert_eq!(at(0, 0, 0), -1.0);
        assert_eq!(at(2, 0, 1), 1.0);
        assert_eq!((at(0, 1, 0), at(1, 1, 0), at(2, 1, 0)), (1.0, -1.0, -1.0));
        assert!((at(1, 1, 1) - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    }
}
