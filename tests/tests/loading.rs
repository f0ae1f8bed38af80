//! Bad weights and configs are errors that name the file and the tensor or key, never panics.

use std::collections::HashMap;
use std::path::Path;

use bora_tests::fixture;
use bora_weights::{LoadOptions, MixtralWeights, WeightDType};
use candle_core::{DType, Device, Tensor};

const SRC: &str = "tiny-mixtral-fused";

/// A copy of the fused fixture whose tensors went through `edit`.
fn edited(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture(SRC).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut t =
        candle_core::safetensors::load(fixture(SRC).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let opts = LoadOptions::new(WeightDType::F32, Device::Cpu);
    match MixtralWeights::load_dir(dir, &opts) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unedited_copy_loads() {
    let dir = edited(|_| {});
    let opts = LoadOptions::new(WeightDType::F32, Device::Cpu);
    MixtralWeights::load_dir(dir.path(), &opts).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let name = "model.layers.1.self_attn.k_proj.weight";
    let dir = edited(|t| {
        t.remove(name);
    });
    let e = load_err(dir.path());
    assert!(e.contains(name) && e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let name = "model.layers.2.mlp.experts.down_proj";
    let dir = edited(|t| {
        t.insert(
            name.into(),
            Tensor::zeros((6, 24, 41), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(
        e.contains(name) && e.contains("[6, 24, 40]") && e.contains("[6, 24, 41]"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let name = "model.norm.weight";
    let dir = edited(|t| {
        t.insert(
            name.into(),
            Tensor::zeros(24, DType::I64, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(e.contains(name) && e.contains("I64"), "{e}");
}

#[test]
fn truncated_file_is_an_error() {
    let dir = edited(|_| {});
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 1000).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
}

#[test]
fn corrupt_header_is_an_error() {
    let dir = edited(|_| {});
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'!'; // the header's opening brace
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
    // A file too short to hold a header.
    std::fs::write(&path, b"abc").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn missing_shard_and_bad_index_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(fixture("tiny-mixtral").join(f), dir.path().join(f)).unwrap();
    }
    let e = load_err(dir.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        b"{\"weight_map\": 3}",
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("weight_map"),
        "{e}"
    );
}

#[test]
fn no_weights_and_bad_config_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture(SRC).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("no weights"), "{e}");

    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(SRC).join("config.json")).unwrap())
            .unwrap();
    cfg["num_experts_per_tok"] = serde_json::json!(7);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("num_experts_per_tok"), "{e}");

    std::fs::write(dir.path().join("config.json"), b"{not json").unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn config_that_disagrees_with_the_weights_is_named() {
    let dir = edited(|_| {});
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    cfg["intermediate_size"] = serde_json::json!(48);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("gate_up_proj") && e.contains("[6, 96, 24]"),
        "{e}"
    );
}

/// Bytes of the buffers behind a host matrix, as they are held.
fn host_bytes(m: &bora_weights::HostMatrix) -> usize {
    use bora_kernels::WeightRef;
    match m.weights() {
        WeightRef::F32(w) => std::mem::size_of_val(w),
        WeightRef::BF16(w) => std::mem::size_of_val(w),
        WeightRef::F16(w) => std::mem::size_of_val(w),
        WeightRef::Quant(_, b) | WeightRef::Packed(_, b) => b.len(),
    }
}

fn matrix_bytes(m: &bora_weights::Matrix) -> usize {
    match m {
        bora_weights::Matrix::Host(h) => host_bytes(h),
        bora_weights::Matrix::Tensor(t) => tensor_bytes(t),
        bora_weights::Matrix::Quant(q) => q.storage_size_in_bytes(),
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// The bytes `weight_bytes` predicts (what the "does not fit" check uses) are the bytes of the
/// loaded weights' buffers, dense and quantized at load: every matrix, expert and norm counted
/// from the slice or tensor that holds it.
#[test]
fn weight_bytes_predicts_the_loaded_size() {
    let dir = tempfile::tempdir().unwrap();
    bora_weights::write_demo_checkpoint(dir.path(), 7, 32000).unwrap();
    for (dtype, quantize) in [
        (WeightDType::BF16, None),
        (WeightDType::F32, None),
        (WeightDType::F32, Some(bora_weights::QType::Q8_0)),
    ] {
        let opts = LoadOptions {
            quantize,
            ..LoadOptions::new(dtype, Device::Cpu)
        };
        let w = MixtralWeights::load_dir(dir.path(), &opts).unwrap();
        let mut held = matrix_bytes(&w.embed) + tensor_bytes(&w.final_norm);
        if !w.config.tie_word_embeddings {
            held += matrix_bytes(&w.lm_head);
        }
        for l in &w.layers {
            held += [&l.q, &l.k, &l.v, &l.o, &l.router]
                .into_iter()
                .map(matrix_bytes)
                .sum::<usize>();
            held += tensor_bytes(&l.attn_norm) + tensor_bytes(&l.moe_norm);
            match &l.experts {
                bora_weights::Experts::Host { gate, up, down } => {
                    held += gate
                        .iter()
                        .chain(up)
                        .chain(down)
                        .map(host_bytes)
                        .sum::<usize>();
                }
                other => panic!("host experts expected, got {other:?}"),
            }
        }
        assert_eq!(
            bora_weights::weight_bytes(&w.config, &opts),
            held as u64,
            "{dtype:?} {quantize:?}"
        );
    }
}

/// Issue 16, item 4: a context length of 2^32-1 in a GGUF file, or 10^9 in config.json, is a
/// clear error before anything is sized from it (the rotary table took 16 to 550 GB).
#[test]
fn absurd_context_lengths_are_refused_before_any_allocation() {
    let good = std::fs::read(fixture("gguf/tiny-Q8_0.gguf")).unwrap();
    let key = b"llama.context_length";
    let at = good
        .windows(key.len())
        .position(|w| w == key)
        .expect("the fixture names its context length");
    // The key, then the value's type (u32 = 4), then the value.
    let value_at = at + key.len() + 4;
    assert_eq!(&good[at + key.len()..value_at], &4u32.to_le_bytes());
    let mut bad = good.clone();
    bad[value_at..value_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-context.gguf");
    std::fs::write(&path, &bad).unwrap();
    let store = bora_weights::GgufStore::open(&path).unwrap();
    let e = bora_weights::gguf_config(&store).unwrap_err().to_string();
    assert!(
        e.contains("max_position_embeddings") && e.contains("4294967295"),
        "{e}"
    );

    let dir = edited(|_| {});
    let cfg = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["max_position_embeddings"] = serde_json::json!(1_000_000_000u64);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("max_position_embeddings") && e.contains("over bora's limit"),
        "{e}"
    );
}
