//! Parameter initialisation as locvtp-method.md section 2 states it:
//! Xavier-uniform (gain sqrt 2) for every trainable Linear weight, PyTorch's
//! defaults for convolutions and biases.

use tch::nn::{self, Init};

/// PyTorch's default for conv and linear biases and conv weights
/// (kaiming-uniform with a = sqrt 5 reduces to this bound).
pub(crate) fn default_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// Xavier-uniform with gain sqrt(2).
fn xavier_uniform(fan_in: i64, fan_out: i64) -> Init {
    let bound = 2f64.sqrt() * (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

pub fn xavier_linear(vs: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    nn::linear(
        vs,
        d_in,
        d_out,
        nn::LinearConfig { ws_init: xavier_uniform(d_in, d_out), bs_init: Some(default_uniform(d_in)), bias: true },
    )
}

/// 3x3x3 convolution with padding 1.
pub fn conv3d(vs: nn::Path, c_in: i64, c_out: i64, how: crate::config::ConvInit) -> nn::Conv3D {
    let fan_in = c_in * 27;
    let (ws_init, bs_init) = match how {
        crate::config::ConvInit::Pytorch => (default_uniform(fan_in), default_uniform(fan_in)),
        crate::config::ConvInit::Kaiming => (nn::init::DEFAULT_KAIMING_NORMAL, Init::Const(0.0)),
    };
    nn::conv3d(vs, c_in, c_out, 3, nn::ConvConfig { padding: 1, ws_init, bs_init, ..Default::default() })
}
