//! Errors of bora-weights. Each names the file and, where there is one, the tensor.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot open weights {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("shard index {path} is invalid: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    #[error("tensor `{name}` is missing from {where_}")]
    MissingTensor { name: String, where_: String },
    #[error("tensor `{name}` in {file} has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}` in {file} has dtype {got}, expected f32, bf16 or f16")]
    DType {
        name: String,
        file: PathBuf,
        got: String,
    },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "the model does not fit on {device}: its weights need {:.2} GiB, and {:.2} GiB of the \
         device's {:.2} GiB are free (a smaller quantization, e.g. --quantize q4_k, or a \
         device with more memory)",
        gib(*need), gib(*free), gib(*total)
    )]
    DoesNotFit {
        device: String,
        need: u64,
        free: u64,
        total: u64,
    },
    #[error("{0}")]
    Core(#[from] bora_core::CoreError),
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn does_not_fit_says_what_is_needed_and_free() {
        let e = WeightsError::DoesNotFit {
            device: "cuda:0".into(),
            need: 93 << 30,
            free: 79 << 30,
            total: 80 << 30,
        }
        .to_string();
        assert!(
            e.starts_with("the model does not fit on cuda:0: its weights need 93.00 GiB, and 79.00 GiB of the device's 80.00 GiB are free"),
            "{e}"
        );
    }
}
