//! Shared build script of every package whose binaries or tests link libtorch.
//!
//! torch-sys reports where it found libtorch (`DEP_TCH_LIBTORCH_LIB`); we bake
//! that folder into the runtime search path (rpath) so that the binaries run
//! from any working directory without `LD_LIBRARY_PATH`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // libtorch_cuda and friends are only needed on GPU machines; keep the
        // linker from dropping them so that CUDA is found when present.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    }
}
