//! Errors of bora-core. Each message names the key, value or file at fault.

use std::path::PathBuf;

/// An error in a model configuration or a device/dtype specification.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot read config {path}: {source}")]
    ConfigIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid JSON: {source}")]
    ConfigJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config: missing key `{key}`")]
    MissingKey { key: &'static str },
    #[error("config: key `{key}` has an invalid value ({reason})")]
    InvalidKey { key: &'static str, reason: String },
    #[error("config: unsupported architecture {found:?}; bora supports MixtralForCausalLM")]
    UnsupportedArchitecture { found: String },
    #[error("unknown device `{0}`: expected cpu, cuda, cuda:N or metal")]
    UnknownDevice(String),
    #[error("device `{device}` is not available: this bora binary was built without the `{feature}` feature")]
    BackendNotCompiled {
        device: String,
        feature: &'static str,
    },
    #[error("device `{device}` could not be opened: {reason}")]
    DeviceUnavailable { device: String, reason: String },
    #[error("unknown dtype `{0}`: expected f32, bf16 or f16")]
    UnknownDType(String),
}
