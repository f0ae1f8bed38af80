//! The KV cache's dtypes on bora's CPU path: bf16 and f16 halve the f32 cache, q8_0 (ggml's
//! 8-bit blocks) takes 34/64 of bf16's bytes, and their logits stay within stated tolerances of
//! the f32 cache's and of each other's.

use bora_engine::load::{load_weights, DTypeSpec, KvDTypeSpec, ModelOptions, ModelSource};
use bora_model::Model;
use bora_tests::fixture;
use bora_tests::steps::{argmax, assert_close, greedy, run, Tolerance};

fn load(model: &str, kv: Option<KvDTypeSpec>) -> Model {
    load_with(
        model,
        ModelOptions {
            kv_cache_dtype: kv,
            ..ModelOptions::default()
        },
    )
}

fn load_with(model: &str, o: ModelOptions) -> Model {
    let source = ModelSource::Named(fixture(model).display().to_string());
    Model::new(load_weights(&source, &o, true, &mut |_| {}).unwrap()).unwrap()
}

/// A 16-bit cache rounds each key and value to 8 (bf16) or 11 (f16) significant bits; q8_0 to
/// steps of 1/127 of the largest of its 32 values. On the dense fixture (logits within about
/// ±5), measured against the f32 cache: bf16 median 0.004, largest 0.05; f16 0.0005 and 0.005;
/// q8_0 0.012 and 0.15.
const DENSE: [Tolerance; 2] = [
    Tolerance {
        median: 0.01,
        max: 0.1,
    },
    Tolerance {
        median: 0.03,
        max: 0.3,
    },
];
/// Quantized weights amplify any change: bora's kernels quantize each product's activations
/// to 8 bits, so a value moved in its last bits can round the other way, and a token whose two
/// best experts nearly tie can take the other one (`bora check-device --help`): the Q8_0
/// fixture moves by up to 0.2 whatever the cache, the Q4_K_M one by up to 1.4 with an f16
/// cache and 3.5 with bf16. Its greedy tokens mostly agree.
const QUANTIZED: [Tolerance; 2] = [
    Tolerance {
        median: 0.05,
        max: 4.0,
    },
    Tolerance {
        median: 0.05,
        max: 4.0,
    },
];

const STEPS: usize = 8;

#[test]
fn every_kv_dtype_stays_near_the_f32_cache() {
    for (model, [half_tol, q8_tolerance]) in [
        ("gguf/tiny-F16.gguf", DENSE),
        ("gguf/tiny-Q8_0.gguf", QUANTIZED),
        ("gguf/tiny-Q4_K_M.gguf", QUANTIZED),
    ] {
        let f32_model = load(model, None);
        let (want, feed) = greedy(&f32_model, STEPS);
        let logits = |kv| run(&load(model, Some(kv)), STEPS, &feed);
        let bf16 = logits(KvDTypeSpec::Float(DTypeSpec::BF16));
        let f16 = logits(KvDTypeSpec::Float(DTypeSpec::F16));
        let q8 = logits(KvDTypeSpec::Q8_0);
        assert_close(&want, &bf16, half_tol, &format!("{model} bf16 against f32"));
        assert_close(&want, &f16, half_tol, &format!("{model} f16 against f32"));
        assert_close(
            &bf16,
            &q8,
            q8_tol(q8_tolerance),
            &format!("{model} q8_0 against bf16"),
        );
        assert_close(
            &want,
            &q8,
            q8_tolerance,
            &format!("{model} q8_0 against f32"),
        );
        // Not the same numbers: the cache's dtype is in effect.
        assert_ne!(q8, bf16);
        assert_ne!(bf16, want);
        // Greedy tokens: at most one step in ten differs.
        let agree = want
            .iter()
            .zip(&q8)
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        assert!(
            agree * 10 >= want.len() * 9,
            "{model}: {agree} of {}",
            want.len()
        );
    }
}

/// q8_0 against bf16: both caches' errors add up.
fn q8_tol(t: Tolerance) -> Tolerance {
    Tolerance {
        median: 2.0 * t.median,
        max: 2.0 * t.max,
    }
}

#[test]
fn q8_0_takes_34_of_64_bytes_of_bf16() {
    let bytes = |kv| {
        let m = load("gguf/tiny-F16.gguf", Some(kv));
        let c = m.new_block_cache(8, 16).unwrap();
        assert_eq!(
            c.size_bytes(),
            8 * bora_model::KvCache::block_bytes(m.config(), 16, m.kv_dtype())
        );
        c.size_bytes()
    };
    let bf16 = bytes(KvDTypeSpec::Float(DTypeSpec::BF16));
    let q8 = bytes(KvDTypeSpec::Q8_0);
    assert_eq!(q8 * 64, bf16 * 34);
    assert_eq!(bytes(KvDTypeSpec::Float(DTypeSpec::F32)), 2 * bf16);
}

#[test]
fn q8_0_needs_a_head_size_of_whole_blocks() {
    // tiny-mixtral's heads have 8 values.
    let source = ModelSource::Named(fixture("tiny-mixtral").display().to_string());
    let o = ModelOptions {
        kv_cache_dtype: Some(KvDTypeSpec::Q8_0),
        ..ModelOptions::default()
    };
    let m = Model::new(load_weights(&source, &o, true, &mut |_| {}).unwrap()).unwrap();
    let e = m.new_block_cache(4, 16).unwrap_err().to_string();
    assert!(e.contains("multiple of 32"), "{e}");
}

/// candle's path (a GPU's; its CPU device standing in) keeps a cache in another dtype than its
/// activations, converting rows as they are written and read: bf16 activations over an f32 or
/// f16 cache, f32 activations over a bf16 one, each near the cache in the activations' dtype.
#[test]
fn candles_path_takes_a_cache_of_another_dtype() {
    let model = "gguf/tiny-F16.gguf";
    let on = |act: DTypeSpec, kv: Option<DTypeSpec>| {
        load_with(
            model,
            ModelOptions {
                dtype: Some(act),
                candle_on_cpu: true,
                kv_cache_dtype: kv.map(KvDTypeSpec::Float),
                ..ModelOptions::default()
            },
        )
    };
    for (act, kvs) in [
        (DTypeSpec::BF16, [DTypeSpec::F32, DTypeSpec::F16]),
        (DTypeSpec::F32, [DTypeSpec::BF16, DTypeSpec::F16]),
    ] {
        let same = on(act, None);
        assert_eq!(same.kv_dtype(), act.dtype());
        let (want, feed) = greedy(&same, STEPS);
        for kv in kvs {
            let m = on(act, Some(kv));
            assert_eq!(m.kv_dtype(), kv.dtype());
            let got = run(&m, STEPS, &feed);
            // bf16 activations round every product to 8 bits: their tolerance is check-device's.
            let tol = if act == DTypeSpec::BF16 {
                Tolerance {
                    median: 0.1,
                    max: 1.0,
                }
            } else {
                DENSE[0]
            };
            assert_close(
                &want,
                &got,
                tol,
                &format!("{act:?} activations, {kv:?} cache"),
            );
        }
    }
    // q8_0 is bora's CPU kernels' alone.
    let source = ModelSource::Named(fixture(model).display().to_string());
    let o = ModelOptions {
        candle_on_cpu: true,
        kv_cache_dtype: Some(KvDTypeSpec::Q8_0),
        ..ModelOptions::default()
    };
    let e = Model::new(load_weights(&source, &o, true, &mut |_| {}).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("q8_0 KV cache is not supported here"), "{e}");
}
