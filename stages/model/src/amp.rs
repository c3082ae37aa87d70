//! Mixed precision (bf16 autocast) and CUDA loading, which tch 0.24 does
//! not offer.
//!
//! `tch::autocast` switches libtorch's CUDA autocast on with its default
//! reduced type, float16; LocVTP's mixed precision is bfloat16 (no loss
//! scaling needed). libtorch's C++ API has the setters, and they are
//! exported by `libtorch_cpu.so`, which tch already links; tch's C layer
//! just does not wrap them. They are declared here under their Itanium
//! mangled names; both enums are `enum class : int8_t` in c10, so they pass
//! as `i8`. The names have been stable since libtorch 2.4 (when the
//! per-device autocast API replaced the CUDA-only one).

use anyhow::{bail, Result};
use std::ffi::CStr;
use tch::{Device, Kind, Tensor};

// c10::DeviceType
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
// c10::ScalarType::BFloat16
const SCALAR_BFLOAT16: i8 = 15;

extern "C" {
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
}

fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => DEVICE_CUDA,
        _ => DEVICE_CPU,
    }
}

/// Runs `f` under autocast to bfloat16 on `device`'s type when `enabled`
/// (as `torch.autocast(device_type, dtype=torch.bfloat16)`), else plainly.
pub fn bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let dt = device_type(device);
    // SAFETY: plain setters of thread-local autocast state in libtorch; the
    // nesting counter and cache are handled as torch.autocast does.
    unsafe {
        let previous = at_is_autocast_enabled(dt);
        at_set_autocast_dtype(dt, SCALAR_BFLOAT16);
        at_set_autocast_enabled(dt, true);
        torch_sys::at_autocast_increment_nesting();
        let out = f();
        if torch_sys::at_autocast_decrement_nesting() == 0 {
            torch_sys::at_autocast_clear_cache();
        }
        at_set_autocast_enabled(dt, previous);
        out
    }
}

/// Fails unless a matrix product under [`bf16`] really comes out bfloat16,
/// so that a libtorch whose autocast API differs is caught before any
/// number is reported.
pub fn check_bf16(device: Device) -> Result<()> {
    let a = Tensor::ones([8, 8], (Kind::Float, device));
    let kind = bf16(device, true, || a.matmul(&a).kind());
    if kind != Kind::BFloat16 {
        bail!("autocast to bfloat16 did not take effect on {device:?} (matmul gave {kind:?})");
    }
    Ok(())
}

/// Loads `libtorch_cuda.so` into the process before the first CUDA call.
///
/// build/torch_rpath.rs links it when the build machine's libtorch has it;
/// a binary built against a CPU-only libtorch and run with
/// `LD_LIBRARY_PATH` at a CUDA build would otherwise never load it, and
/// libtorch would see no GPU. The library registers its CUDA hooks when
/// loaded; opening it again when already linked is a no-op. It is found
/// through `LD_LIBRARY_PATH` or this binary's run path.
pub fn load_torch_cuda() -> Result<()> {
    let name = c"libtorch_cuda.so";
    // SAFETY: dlopen/dlerror with a valid NUL-terminated name; the handle
    // is kept open for the life of the process on purpose.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let msg = if err.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            bail!("cannot load libtorch_cuda.so ({msg}); point LD_LIBRARY_PATH at a CUDA build of torch's lib folder");
        }
    }
    Ok(())
}

/// Precision of the model's forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast on CUDA (faster, and equal to fp32 within the tolerance
    /// the tests check), fp32 elsewhere.
    #[default]
    Auto,
    Fp32,
    Bf16,
}

impl Precision {
    /// Whether forward passes on `device` run under bf16 autocast.
    pub fn autocast(self, device: Device) -> bool {
        match self {
            Precision::Auto => device.is_cuda(),
            Precision::Fp32 => false,
            Precision::Bf16 => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalise_u8_clips, LocVtp, ModelConfig};

    /// The released C3D's projected clip features under bf16 autocast stay
    /// within tolerance of fp32, on the GPU where autocast is the default.
    #[test]
    #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
    fn bf16_features_match_fp32_within_tolerance() {
        let _ = load_torch_cuda();
        assert!(tch::Cuda::is_available(), "no CUDA device");
        let device = Device::Cuda(0);
        check_bf16(device).unwrap();
        let model = LocVtp::new(&ModelConfig::default(), device, 0);
        tch::manual_seed(1);
        let clips = Tensor::randint(256, [8, 16, 112, 112, 3], (Kind::Uint8, device));
        let x = normalise_u8_clips(&clips);
        let (fp32, bf) = tch::no_grad(|| {
            let a = model.encode_clips(&x, false).1;
            let b = bf16(device, true, || model.encode_clips(&x, false).1).to_kind(Kind::Float);
            (a, b)
        });
        let cos = Tensor::cosine_similarity(&fp32, &bf, 1, 1e-8).min().double_value(&[]);
        let rel = ((&fp32 - &bf).norm() / fp32.norm()).double_value(&[]);
        eprintln!("bf16 vs fp32: min cosine {cos:.6}, relative error {rel:.2e}");
        assert!(cos > 0.999 && rel < 0.03, "min cosine {cos}, relative error {rel}");
    }

    #[test]
    fn auto_means_bf16_on_cuda_only() {
        assert!(Precision::Auto.autocast(Device::Cuda(0)));
        assert!(!Precision::Auto.autocast(Device::Cpu));
        assert!(Precision::Bf16.autocast(Device::Cpu) && !Precision::Fp32.autocast(Device::Cuda(0)));
    }
}
