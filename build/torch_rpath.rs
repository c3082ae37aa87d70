//! Shared build script of every package whose binaries or tests link libtorch.
//!
//! torch-sys reports where it found libtorch (`DEP_TCH_LIBTORCH_LIB`); we bake
//! that folder into the runtime search path (rpath) so that the binaries run
//! from any working directory without `LD_LIBRARY_PATH`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Nothing in our code calls into libtorch_cuda directly, so an
        // as-needed link would drop it and libtorch would then see no GPU.
        // Link it unconditionally when the libtorch build has one.
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
