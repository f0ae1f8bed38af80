//! bora-weights: weight files and the weight types the model computes with.
//!
//! * [`SafetensorsStore`]: one `model.safetensors` or the shards of a
//!   `model.safetensors.index.json`, memory-mapped and validated (header, offsets, file length).
//! * [`Matrix`]: one weight type for every linear layer. On the CPU it stays in its stored dtype
//!   (f32, bf16, f16), borrowed from the memory map when the file already has the wanted dtype,
//!   and is multiplied by `bora-kernels`; elsewhere it is a candle tensor.
//! * [`Experts`]: a layer's experts, addressed as stacked `[E, I, H]` / `[E, H, I]` weights
//!   whichever layout the file has.
//! * [`MixtralWeights`]: every tensor of a Mixtral checkpoint, found by [`TensorName`] in the
//!   per-expert layout of Mistral's checkpoints or the fused layout of transformers 5.

mod demo;
mod error;
mod experts;
pub mod gguf;
mod gguf_export;
mod gguf_model;
mod gguf_write;
mod matrix;
mod mixtral;
mod names;
mod random;
mod store;

pub use bora_kernels::QType;
pub use demo::{write_demo_checkpoint, DEMO_CONFIG};
pub use error::WeightsError;
pub use experts::Experts;
pub use gguf::{GgmlType, GgufStore, MetaValue};
pub use gguf_export::write_gguf;
pub use gguf_model::{gguf_config, gguf_expert_bytes, gguf_type_counts, unpermute_order};
pub use gguf_write::{GgufWriter, TensorSpec};
pub use matrix::{
    upload_quant, with_cpu, with_cpu_f32, HostMatrix, Matrix, WeightDType, WeightFormat,
};
pub use mixtral::{
    check_fits, check_fits_owned, device_matrix, weight_bytes, Backend, LayerWeights, LoadOptions,
    MixtralWeights,
};
pub use names::{ExpertLayout, TensorName};
pub use random::{preset_config, random_weights, write_random_gguf, RandomModel};
pub use store::{MapMode, SafetensorsStore, StoredTensor};

/// Result with [`WeightsError`].
pub type Result<T> = std::result::Result<T, WeightsError>;
