//! The forward pass against transformers' float32 outputs on random-weight fixtures
//! (models/gen_fixtures.py): every prompt position, 10 greedy decode steps with the KV cache.

use bora_model::{Batch, Logits, SeqInput};
use bora_tests::*;
use bora_weights::{Backend, WeightDType};

/// f32 logits within this of transformers' (the bound).
const F32_TOL: f32 = 1e-4;

/// tiny-mixtral's bf16 weights with bf16 activations (AVX512_BF16): (median, 90th percentile,
/// max) |Δlogit| bounds, about 1.3x the measured (0.041, 0.085, 0.146). Its logits span about
/// ±5.
const BOUND_BF16_ACTS: (f32, f32, f32) = (0.055, 0.11, 0.2);

const FIXTURES: [&str; 2] = ["tiny-mixtral", "tiny-mixtral-fused"];

fn check_against_reference(name: &str, dtype: WeightDType, backend: Backend, tol: f32) -> f32 {
    let model = load(name, dtype, backend);
    let r = Reference::load(name);
    let mut worst = 0f32;
    for k in 0..r.prompts() {
        let got = prefill_all(&model, &r.ids(k));
        let d = max_abs_diff(&got, &r.logits(k));
        assert!(
            d <= tol,
            "{name} {dtype:?} {backend:?} prompt {k}: prefill logits off by {d}"
        );
        worst = worst.max(d);
    }
    let want_greedy = r.greedy(0);
    let (greedy, logits) = greedy_decode(&model, &r.ids(0), want_greedy.len() - 1);
    let d = max_abs_diff(&logits, &r.decode_logits(0));
    assert!(
        d <= tol,
        "{name} {dtype:?} {backend:?}: decode logits off by {d}"
    );
    assert_eq!(
        greedy, want_greedy,
        "{name} {dtype:?} {backend:?}: greedy tokens differ"
    );
    worst.max(d)
}

#[test]
fn f32_matches_transformers() {
    for name in FIXTURES {
        let d = check_against_reference(name, WeightDType::F32, Backend::Host, F32_TOL);
        eprintln!("{name} f32 (bora kernels): max |Δlogit| = {d:.2e}");
    }
}

#[test]
fn candle_backend_f32_matches_transformers() {
    for name in FIXTURES {
        let d = check_against_reference(name, WeightDType::F32, Backend::Candle, F32_TOL);
        eprintln!("{name} f32 (candle ops): max |Δlogit| = {d:.2e}");
    }
}

/// tiny-mixtral is stored in bf16, so keeping its weights in bf16 (memory-mapped, never
/// widened) computes on exactly the values transformers used: the f32 bound holds, unless the
/// CPU has AVX512_BF16, where bf16 products round their activations to bf16 (as llama.cpp's
/// do). Then, measured as (median over positions, 90th percentile, max) of |Δlogit| with
/// teacher forcing: BOUND_BF16_ACTS below, the measurement about 1.3x.
#[test]
fn bf16_checkpoint_kept_in_bf16_matches_transformers() {
    if bora_kernels::bf16_activations() {
        let (median, p90, max) = measure("tiny-mixtral", WeightDType::BF16, Backend::Host);
        eprintln!(
            "tiny-mixtral bf16 weights and activations: |Δlogit| median {median:.3e}, 90th percentile {p90:.3e}, max {max:.3e}"
        );
        let (median_tol, p90_tol, max_tol) = BOUND_BF16_ACTS;
        assert!(median <= median_tol, "median |Δlogit| {median}");
        assert!(p90 <= p90_tol, "90th percentile |Δlogit| {p90}");
        assert!(max <= max_tol, "max |Δlogit| {max}");
    } else {
        let d = check_against_reference("tiny-mixtral", WeightDType::BF16, Backend::Host, F32_TOL);
        eprintln!("tiny-mixtral bf16 weights (mapped): max |Δlogit| = {d:.2e}");
    }
    let model = load("tiny-mixtral", WeightDType::BF16, Backend::Host);
    let bora_weights::Matrix::Host(q) = &model.weights().layers[0].q else {
        panic!("host backend")
    };
    assert!(
        q.is_mapped(),
        "bf16 weights of a bf16 file must be read from the memory map"
    );
}

/// Per-position worst |Δlogit|, over every prompt position and the decode steps, decoding
/// transformers' greedy tokens (teacher forcing: a token that rounding made differ would
/// otherwise compare logits of two different sequences). Returns (median, 90th percentile,
/// max).
fn measure(name: &str, dtype: WeightDType, backend: Backend) -> (f32, f32, f32) {
    let model = load(name, dtype, backend);
    let r = Reference::load(name);
    let mut rows: Vec<f32> = Vec::new();
    let mut per_row = |got: &[Vec<f32>], want: &[Vec<f32>]| {
        rows.extend(
            got.iter()
                .zip(want)
                .map(|(g, w)| max_abs_diff(std::slice::from_ref(g), std::slice::from_ref(w))),
        )
    };
    for k in 0..r.prompts() {
        per_row(&prefill_all(&model, &r.ids(k)), &r.logits(k));
    }
    let mut forced = r.ids(0);
    let greedy = r.greedy(0);
    forced.extend_from_slice(&greedy[..greedy.len() - 1]);
    let all = prefill_all(&model, &forced);
    per_row(&all[r.ids(0).len()..], &r.decode_logits(0));
    rows.sort_by(f32::total_cmp);
    (
        rows[rows.len() / 2],
        rows[rows.len() * 9 / 10],
        rows[rows.len() - 1],
    )
}

/// bf16 tolerances, measured on tiny-mixtral-fused: it is stored in f32, so keeping its
/// weights in bf16 rounds them (relative error up to 2^-9). Its logits span about ±5.9, and its
/// routing margins are thin enough that rounding moves one position's token to another expert
/// (top-3 of 6), which is where the maximum comes from. Measured here, as (median over
/// positions, 90th percentile, max): bf16 weights with f32 activations (bora's CPU path)
/// (0.034, 0.083, 0.974); bf16 weights and activations (candle's path) (0.075, 0.153,
/// 0.974); on a CPU with AVX512_BF16, bora's CPU path rounds the activations of its bf16
/// products too (0.049, 0.173, 0.983). The bounds are these and about 1.3x.
#[test]
fn bf16_within_measured_tolerance() {
    let host = if bora_kernels::bf16_activations() {
        (0.065, 0.23, 1.25)
    } else {
        (0.045, 0.11, 1.25)
    };
    // (backend, median, 90th percentile, max) bounds.
    for (backend, median_tol, p90_tol, max_tol) in [
        (Backend::Host, host.0, host.1, host.2),
        (Backend::Candle, 0.1, 0.2, 1.25),
    ] {
        let (median, p90, max) = measure("tiny-mixtral-fused", WeightDType::BF16, backend);
        eprintln!(
            "tiny-mixtral-fused bf16 {backend:?}: |Δlogit| median {median:.3e}, 90th percentile {p90:.3e}, max {max:.3e}"
        );
        assert!(
            median <= median_tol,
            "bf16 {backend:?}: median |Δlogit| {median}"
        );
        assert!(
            p90 <= p90_tol,
            "bf16 {backend:?}: 90th percentile |Δlogit| {p90}"
        );
        assert!(max <= max_tol, "bf16 {backend:?}: max |Δlogit| {max}");
    }
}

/// Decoding with the cache gives the logits of a fresh forward over the whole sequence.
#[test]
fn decode_with_cache_equals_recomputation() {
    for name in FIXTURES {
        let model = load(name, WeightDType::F32, Backend::Host);
        let ids = Reference::load(name).ids(0);
        let (greedy, logits) = greedy_decode(&model, &ids, 8);
        let mut full_ids = ids.clone();
        full_ids.extend_from_slice(&greedy[..8]);
        let full = prefill_all(&model, &full_ids);
        let d = max_abs_diff(&logits, &full[ids.len()..]);
        assert!(
            d <= 1e-5,
            "{name}: cached decode differs from recomputation by {d}"
        );
    }
}

/// A batch of sequences of different lengths, and a step mixing a decode with a prefill, give
/// each sequence the logits it gets alone.
#[test]
fn batched_sequences_match_single() {
    for name in FIXTURES {
        let model = load(name, WeightDType::F32, Backend::Host);
        let r = Reference::load(name);
        let (a, b) = (r.ids(0), r.ids(1));
        assert_ne!(a.len(), b.len());
        let alone_a = prefill_all(&model, &a);
        let alone_b = prefill_all(&model, &b);

        let mut cache = model.new_cache(2, 32).unwrap();
        let batch = Batch {
            seqs: vec![
                SeqInput {
                    tokens: a.clone(),
                    start_pos: 0,
                    blocks: cache.slot(0),
                    logits: Logits::All,
                },
                SeqInput {
                    tokens: b.clone(),
                    start_pos: 0,
                    blocks: cache.slot(1),
                    logits: Logits::All,
                },
            ],
        };
        let both = model
            .forward(&batch, &mut cache)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let d =
            max_abs_diff(&both[..a.len()], &alone_a).max(max_abs_diff(&both[a.len()..], &alone_b));
        assert!(d <= 1e-5, "{name}: batched prefill differs by {d}");

        // Step 2: sequence 0 decodes one token while sequence 1 is prefilled in two chunks.
        let mut cache = model.new_cache(2, 32).unwrap();
        let first = Batch::single(a[..a.len() - 1].to_vec(), 0, cache.slot(0), Logits::None);
        model.forward(&first, &mut cache).unwrap();
        let cut = b.len() / 2;
        let mixed = Batch {
            seqs: vec![
                SeqInput {
                    tokens: vec![a[a.len() - 1]],
                    start_pos: a.len() - 1,
                    blocks: cache.slot(0),
                    logits: Logits::Last,
                },
                SeqInput {
                    tokens: b[..cut].to_vec(),
                    start_pos: 0,
                    blocks: cache.slot(1),
                    logits: Logits::All,
                },
            ],
        };
        let out = model
            .forward(&mixed, &mut cache)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let rest = Batch::single(b[cut..].to_vec(), cut, cache.slot(1), Logits::All);
        let out2 = model
            .forward(&rest, &mut cache)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let d = max_abs_diff(&out[..1], &alone_a[a.len() - 1..])
            .max(max_abs_diff(&out[1..], &alone_b[..cut]))
            .max(max_abs_diff(&out2, &alone_b[cut..]));
        assert!(
            d <= 1e-5,
            "{name}: mixed decode/chunked prefill differs by {d}"
        );
    }
}

/// The router's decisions, counted per layer and expert, agree between the two compute paths
/// and account for every token's A experts; counting changes no logit.
#[test]
fn routing_is_observable() {
    use bora_model::RoutingStats;
    for name in FIXTURES {
        let ids = Reference::load(name).ids(0);
        let mut seen = Vec::new();
        for backend in [Backend::Host, Backend::Candle] {
            let model = load(name, WeightDType::F32, backend);
            let cfg = model.config().clone();
            let mut stats = RoutingStats::new(cfg.num_hidden_layers, cfg.num_local_experts);
            let mut cache = model.new_cache(1, ids.len()).unwrap();
            let b = Batch::single(ids.clone(), 0, cache.slot(0), Logits::All);
            let observed = model
                .forward_observed(&b, &mut cache, &mut stats)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(
                observed,
                prefill_all(&model, &ids),
                "{name}: observing changed the logits"
            );
            for row in &stats.counts {
                assert_eq!(
                    row.iter().sum::<u64>(),
                    (ids.len() * cfg.num_experts_per_tok) as u64
                );
                assert!(
                    row.iter().all(|&c| c <= ids.len() as u64),
                    "an expert chosen twice for a token"
                );
            }
            seen.push(stats);
        }
        assert_eq!(seen[0], seen[1], "{name}: the two paths routed differently");
    }
}

/// A sequence whose positions are scattered over blocks in any order gets the logits of a
/// sequence in consecutive rows, in prefill and in decode.
#[test]
fn scattered_blocks_match_contiguous() {
    let model = load("tiny-mixtral-fused", WeightDType::F32, Backend::Host);
    let ids = Reference::load("tiny-mixtral-fused").ids(0);
    let want = prefill_all(&model, &ids);
    let mut cache = model.new_block_cache(12, 3).unwrap();
    let table = vec![7, 2, 11, 0, 5];
    let (head, tail) = ids.split_at(4);
    let mut got = model
        .forward(
            &Batch::single(head.to_vec(), 0, table.clone(), Logits::All),
            &mut cache,
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, &t) in tail.iter().enumerate() {
        let b = Batch::single(vec![t], 4 + i, table.clone(), Logits::Last);
        got.extend(
            model
                .forward(&b, &mut cache)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
        );
    }
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "scattered blocks differ by {d}");
    // A table too short for the positions is an error, not a panic.
    let e = model
        .forward(
            &Batch::single(ids.clone(), 0, vec![1, 2], Logits::Last),
            &mut cache,
        )
        .unwrap_err();
    assert!(e.to_string().contains("past the 6 positions"), "{e}");
    let e = model
        .forward(
            &Batch::single(vec![5], 0, vec![12], Logits::Last),
            &mut cache,
        )
        .unwrap_err();
    assert!(e.to_string().contains("block 12 does not exist"), "{e}");
}

/// Prefix caching at the model's level: a sequence that reuses another's full blocks and
/// computes only the rest gets the logits of one that computes everything.
#[test]
fn shared_prefix_blocks_give_the_same_logits() {
    let model = load("tiny-mixtral", WeightDType::F32, Backend::Host);
    let r = Reference::load("tiny-mixtral");
    let ids: Vec<u32> = r.ids(1); // 11 tokens
    let mut cache = model.new_block_cache(8, 4).unwrap();
    let miss = model
        .forward(
            &Batch::single(ids.clone(), 0, vec![0, 1, 2], Logits::All),
            &mut cache,
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Blocks 0 and 1 hold positions 0..8; the second sequence computes 8..11 in block 5.
    let hit = model
        .forward(
            &Batch::single(ids[8..].to_vec(), 8, vec![0, 1, 5], Logits::All),
            &mut cache,
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let d = max_abs_diff(&hit, &miss[8..]);
    assert!(d <= 1e-5, "prefix-cache hit differs from a miss by {d}");
    let d = max_abs_diff(&miss, &r.logits(1));
    assert!(d <= F32_TOL, "{d}");
}
