//! bora-core: the types every other crate shares.
//!
//! It owns the typed model configuration ([`ModelConfig`], parsed from a Hugging Face
//! `config.json` of `MixtralForCausalLM`), the device and dtype specifications given on the
//! command line ([`DeviceSpec`], [`DTypeSpec`]) and the errors they raise ([`CoreError`]).

mod config;
mod device;
mod error;

pub use config::{Architecture, ModelConfig, MAX_POSITIONS};
pub use device::{device_memory, device_name, host_memory, DTypeSpec, DeviceSpec, KvDTypeSpec};
pub use error::CoreError;

/// Result with [`CoreError`].
pub type Result<T> = std::result::Result<T, CoreError>;
