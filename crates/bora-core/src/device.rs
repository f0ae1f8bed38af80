//! Device and dtype specifications as given on the command line (`--device`, `--dtype`).

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{CoreError, Result};

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| CoreError::UnknownDevice(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => write!(f, "metal"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device, or says clearly why it cannot be opened.
    pub fn open(self) -> Result<Device> {
        let unavailable = |e: candle_core::Error| CoreError::DeviceUnavailable {
            device: self.to_string(),
            reason: e.to_string(),
        };
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(CoreError::BackendNotCompiled {
                        device: self.to_string(),
                        feature: "cuda",
                    });
                }
                // A CUDA build loads the driver, cuBLAS and cuRAND when the device is opened and
                // first used (and panics when one is missing): both happen here, quietly, so
                // that a machine without them gets this error, not a panic later.
                let opened = quietly(|| {
                    let d = Device::new_cuda(n)?;
                    let a = candle_core::Tensor::ones((2, 2), DType::F32, &d)?;
                    a.matmul(&a)?.to_vec2::<f32>()?;
                    Ok::<_, candle_core::Error>(d)
                });
                match opened {
                    Ok(d) => d.map_err(unavailable),
                    Err(why) => Err(CoreError::DeviceUnavailable {
                        device: self.to_string(),
                        reason: cuda_load_failure(&why),
                    }),
                }
            }
            DeviceSpec::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(CoreError::BackendNotCompiled {
                        device: self.to_string(),
                        feature: "metal",
                    });
                }
                Device::new_metal(0).map_err(unavailable)
            }
        }
    }
}

/// What to tell a user whose CUDA libraries did not load, from cudarc's panic message
/// (`Unable to dynamically load the "cublas" shared library - searched for ...`).
fn cuda_load_failure(why: &str) -> String {
    let what = match why
        .strip_prefix("Unable to dynamically load the \"")
        .and_then(|r| r.split('"').next())
    {
        Some("cuda") => "no NVIDIA driver was found (libcuda)".to_string(),
        Some(lib) => format!("the CUDA library lib{lib} was not found"),
        None => format!("CUDA did not start: {why}"),
    };
    format!(
        "{what}; this build needs the NVIDIA driver and CUDA 13's cuBLAS and cuRAND on the \
         loader's path (LD_LIBRARY_PATH; the nvidia-cublas and nvidia-curand Python wheels \
         have them)"
    )
}

/// Runs `f`, turning a panic into `Err` with its message, without the panic hook's report.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// How `--device` names an opened device: `cpu`, `cuda:N`, `metal`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id).to_string(),
        candle_core::DeviceLocation::Metal { .. } => DeviceSpec::Metal.to_string(),
    }
}

/// `(free, total)` bytes of the device's memory, for a CUDA device; `None` elsewhere.
pub fn device_memory(device: &Device) -> Option<(usize, usize)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.cuda_stream().context().mem_get_info().ok(),
        _ => None,
    }
}

/// The host's available and total memory in bytes (`MemAvailable`, `MemTotal`), where
/// /proc/meminfo tells them.
pub fn host_memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// The dtype weights are kept in and computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeSpec {
    F32,
    BF16,
    F16,
}

impl FromStr for DTypeSpec {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DTypeSpec::F32),
            "bf16" | "bfloat16" => Ok(DTypeSpec::BF16),
            "f16" | "float16" => Ok(DTypeSpec::F16),
            _ => Err(CoreError::UnknownDType(s.to_string())),
        }
    }
}

impl DTypeSpec {
    pub fn dtype(self) -> DType {
        match self {
            DTypeSpec::F32 => DType::F32,
            DTypeSpec::BF16 => DType::BF16,
            DTypeSpec::F16 => DType::F16,
        }
    }
}

/// A KV cache's dtype as the CLI names it: a float dtype, or `q8_0` (ggml's blocks of 32 signed
/// bytes and an f16 scale: 8.5 bits a value, about half of bf16's memory and decode reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDTypeSpec {
    Float(DTypeSpec),
    Q8_0,
}

impl FromStr for KvDTypeSpec {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(KvDTypeSpec::Q8_0),
            other => Ok(KvDTypeSpec::Float(other.parse()?)),
        }
    }
}

impl KvDTypeSpec {
    /// The pool's candle dtype: the float dtype, or `U8` for q8_0 blocks (the KV cache's
    /// convention, `bora_model::KV_Q8_0`).
    pub fn dtype(self) -> DType {
        match self {
            KvDTypeSpec::Float(d) => d.dtype(),
            KvDTypeSpec::Q8_0 => DType::U8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kv_dtypes() {
        assert_eq!("q8_0".parse::<KvDTypeSpec>().unwrap(), KvDTypeSpec::Q8_0);
        assert_eq!(
            "bf16".parse::<KvDTypeSpec>().unwrap(),
            KvDTypeSpec::Float(DTypeSpec::BF16)
        );
        assert_eq!("Q8_0".parse::<KvDTypeSpec>().unwrap().dtype(), DType::U8);
        assert!("q4_0".parse::<KvDTypeSpec>().is_err());
    }

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn quietly_turns_a_panic_into_its_message() {
        assert_eq!(quietly(|| 3), Ok(3));
        assert_eq!(
            quietly(|| -> u8 { panic!("no {}", "lib") }),
            Err("no lib".into())
        );
        assert_eq!(device_memory(&Device::Cpu), None);
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[test]
    fn cuda_load_failures_name_the_library() {
        let m = cuda_load_failure(
            "Unable to dynamically load the \"cublas\" shared library - searched for [..]",
        );
        assert!(
            m.starts_with("the CUDA library libcublas was not found;"),
            "{m}"
        );
        let m = cuda_load_failure("Unable to dynamically load the \"cuda\" shared library");
        assert!(m.starts_with("no NVIDIA driver was found"), "{m}");
        assert!(cuda_load_failure("boom").starts_with("CUDA did not start: boom;"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
    }
}
