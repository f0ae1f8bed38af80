//! With the `cuda` feature, compiles `src/cuda/*.cu` to PTX with nvcc (found through `$NVCC`,
//! then `$CUDA_ROOT`/`$CUDA_PATH`/`$CUDA_HOME`'s `bin`, then `PATH`). The PTX targets
//! compute capability 7.5, the oldest nvcc 13 knows, so that the driver compiles it for any
//! newer GPU; these kernels use nothing newer.

use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &["moe", "attention"];

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    "nvcc".into()
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["NVCC", "CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    for name in SOURCES {
        let src = format!("src/cuda/{name}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-arch=compute_75", "-O3", "-std=c++17", "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("could not run {} for {src}: {e}", nvcc.display()));
        assert!(status.success(), "{} failed on {src}", nvcc.display());
    }
}
