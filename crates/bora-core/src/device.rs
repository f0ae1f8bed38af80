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
                std::panic::catch_unwind(|| Device::new_cuda(n))
                    .map_err(|_| CoreError::DeviceUnavailable {
                        device: self.to_string(),
                        reason: "the CUDA driver libraries could not be loaded".into(),
                    })?
                    .map_err(unavailable)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature"), "{e}");
    }
}
