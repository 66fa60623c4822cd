//! Makes every binary and test of this crate find libtorch at run time without
//! LD_LIBRARY_PATH, and keeps libtorch_cuda among its needed libraries so that CUDA
//! is available on GPU machines (see docs/toolchain.md).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
