//! C3D (Tran et al. 2015) as LocVTP uses it: eight 3x3x3 convolutions, five
//! max-pools and fc6 as the clip feature. Parameter names follow the released
//! checkpoint (`videoEncoder.embednet.conv1.weight`, ...).

use crate::config::ModelConfig;
use crate::init;
use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Debug)]
pub struct C3d {
    convs: Vec<(nn::Conv3D, Pool)>,
    fc6: nn::Linear,
    // fc7 and fc8 exist so that released checkpoints load and round-trip;
    // LocVTP's clip feature is fc6 and never runs them.
    _fc7: nn::Linear,
    _fc8: nn::Linear,
}

#[derive(Debug, Clone, Copy)]
enum Pool {
    None,
    Space,
    SpaceTime,
    Pool5,
}

impl C3d {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> C3d {
        let [c1, c2, c3, c4, c5] = cfg.c3d.channels;
        let layout = [
            ("conv1", 3, c1, Pool::Space),
            ("conv2", c1, c2, Pool::SpaceTime),
            ("conv3a", c2, c3, Pool::None),
            ("conv3b", c3, c3, Pool::SpaceTime),
            ("conv4a", c3, c4, Pool::None),
            ("conv4b", c4, c4, Pool::SpaceTime),
            ("conv5a", c4, c5, Pool::None),
            ("conv5b", c5, c5, Pool::Pool5),
        ];
        let convs =
            layout.iter().map(|&(name, i, o, pool)| (init::conv3d(vs / name, i, o, cfg.c3d.conv_init), pool)).collect();
        let fc = cfg.c3d.fc_dim;
        C3d {
            convs,
            fc6: init::xavier_linear(vs / "fc6", cfg.pool5_dim(), fc),
            _fc7: init::xavier_linear(vs / "fc7", fc, fc),
            _fc8: init::xavier_linear(vs / "fc8", fc, cfg.c3d.num_classes),
        }
    }

    /// `[N, 3, F, H, W]` normalised clips to `[N, fc_dim]` fc6 features
    /// (after ReLU).
    pub fn forward_fc6(&self, clips: &Tensor) -> Tensor {
        let mut x = clips.shallow_clone();
        for (conv, pool) in &self.convs {
            x = conv.forward(&x).relu();
            x = match pool {
                Pool::None => x,
                Pool::Space => x.max_pool3d([1, 2, 2], [1, 2, 2], [0, 0, 0], [1, 1, 1], false),
                Pool::SpaceTime => x.max_pool3d([2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], false),
                Pool::Pool5 => x.max_pool3d([2, 2, 2], [2, 2, 2], [0, 1, 1], [1, 1, 1], false),
            };
        }
        self.fc6.forward(&x.flatten(1, -1)).relu()
    }
}
