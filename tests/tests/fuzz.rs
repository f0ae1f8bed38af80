//! Fuzzing on stable Rust (issue 16): the files a model comes in, mutated by a seeded
//! generator: GGUF files (the committed fixtures), a safetensors checkpoint's header and its
//! config.json. Opening, reading the configuration and loading the weights give a model or an
//! error, never a panic, an abort or an allocation the file's claims size. `BORA_FUZZ_CASES`
//! sets the cases (tests/fuzz.sh runs many more).

use bora_tests::fixture;
use bora_tests::fuzz::{cases, run_cases, Mutator};
use bora_weights::{gguf_config, GgufStore, LoadOptions, MixtralWeights, WeightDType};
use candle_core::Device;
use serde_json::Value;

fn opts() -> LoadOptions {
    LoadOptions::new(WeightDType::F32, Device::Cpu)
}

#[test]
fn mutated_gguf_files_load_or_are_refused() {
    let files: Vec<Vec<u8>> = ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "vocab-v3.gguf"]
        .iter()
        .map(|f| std::fs::read(fixture("gguf").join(f)).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (mut parsed, mut loaded) = (0u64, 0u64);
    let n = cases(500);
    run_cases("gguf", n, |seed| {
        let mut m = Mutator::new(seed);
        let good = &files[m.below(files.len())];
        // Mostly the header (metadata and tensor infos), where the claims are.
        let head = good.len().min(64 << 10);
        let mut bad = m.bytes(&good[..head]);
        bad.extend_from_slice(&good[head..]);
        parsed += u64::from(bora_weights::gguf::parse(&bad).is_ok());
        let path = dir.path().join(format!("{seed}.gguf"));
        std::fs::write(&path, &bad).unwrap();
        if let Ok(store) = GgufStore::open(&path) {
            if let Ok(cfg) = gguf_config(&store) {
                assert!(cfg.context() <= bora_core::MAX_POSITIONS);
                loaded += u64::from(MixtralWeights::load_gguf(&store, cfg, &opts()).is_ok());
            }
        }
        std::fs::remove_file(&path).unwrap();
    });
    eprintln!("gguf: of {n} mutated files, {parsed} parsed and {loaded} loaded");
    // Mutations that the magic or the first count always stop would test nothing past them:
    // a share of them must get past parsing, and some load whole.
    assert!(
        parsed * 10 >= n,
        "only {parsed} of {n} mutated files parsed"
    );
    assert!(
        loaded * 50 >= n,
        "only {loaded} of {n} mutated files loaded"
    );
}

#[test]
fn mutated_safetensors_headers_and_configs_load_or_are_refused() {
    let src = fixture("tiny-mixtral-fused");
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let (mut configs, mut loaded) = (0u64, 0u64);
    let n = cases(500);
    run_cases("safetensors+config", n, |seed| {
        let mut m = Mutator::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = match m.below(3) {
            // The header: its length, the JSON of names, dtypes, shapes and offsets.
            0 | 1 => {
                let mut w = m.bytes(&weights[..header.min(weights.len())]);
                w.extend_from_slice(&weights[header..]);
                (w, config.clone())
            }
            _ => (weights.clone(), m.json(&config)),
        };
        std::fs::write(dir.path().join("model.safetensors"), &w).unwrap();
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
        if let Ok(cfg) = bora_core::ModelConfig::from_json(&c) {
            assert!(cfg.context() <= bora_core::MAX_POSITIONS);
            configs += 1;
        }
        loaded += u64::from(MixtralWeights::load_dir(dir.path(), &opts()).is_ok());
    });
    eprintln!("safetensors+config: of {n} cases, {configs} configs read and {loaded} loaded");
    assert!(
        configs * 4 >= n,
        "only {configs} of {n} mutated configs read"
    );
    assert!(
        loaded * 20 >= n,
        "only {loaded} of {n} mutated checkpoints loaded"
    );
}
