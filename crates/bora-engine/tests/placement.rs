//! The placement of experts beside a model on a device, with candle's CPU device standing in
//! for the GPU: for every split (every expert on the "device", none, the first N layers, the
//! fit, an expert cache whose copies change between steps) the logits equal those of the model
//! all on the one device, within the stated tolerances; on bora's own CPU path the flags change
//! nothing.

use bora_engine::load::{
    load_weights, CachePolicy, DTypeSpec, ExpertPlacement, ModelOptions, ModelSource,
};
use bora_model::Model;
use bora_tests::fixture;
use bora_tests::steps::{
    assert_close, greedy, run, run_observed, Phase, Tolerance, DENSE_TOLERANCE, QUANT_TOLERANCE,
};

/// Candle's CPU path standing in for a GPU, f32, experts placed as `placement` says.
fn opts(placement: ExpertPlacement) -> ModelOptions {
    opts_in(placement, DTypeSpec::F32)
}

/// [`opts`] in `dtype`.
fn opts_in(placement: ExpertPlacement, dtype: DTypeSpec) -> ModelOptions {
    ModelOptions {
        dtype: Some(dtype),
        candle_on_cpu: true,
        expert_placement: placement,
        ..ModelOptions::default()
    }
}

fn load(model: &str, o: &ModelOptions) -> Model {
    let source = ModelSource::Named(fixture(model).display().to_string());
    Model::new(load_weights(&source, o, true, &mut |_| {}).unwrap()).unwrap()
}

/// The model all on the one device: its logits and the tokens each decode step is fed.
fn reference(model: &str, steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let m = load(model, &opts(ExpertPlacement::FirstOnCpu(0)));
    assert_eq!(m.host_expert_layers(), 0);
    greedy(&m, steps)
}

const STEPS: usize = 4;

fn check_splits(model: &str, tolerance: Tolerance) {
    check_splits_in(model, DTypeSpec::F32, Bound::Logits(tolerance));
    // An expert cache whose copies change between steps, under each policy.
    let (want, feed) = reference(model, STEPS);
    for policy in [CachePolicy::Hot, CachePolicy::Lru] {
        let mut m = load(model, &opts(ExpertPlacement::Cpu));
        let per_expert = m.weights().layers[0].experts.expert_bytes() as u64;
        assert!(m.set_expert_cache(policy, 3 * per_expert));
        let got = cache_steps(&m, &feed, policy);
        let s = m.expert_cache_stats().unwrap();
        assert_eq!(s.capacity, 3);
        assert!(s.moves >= 3, "{policy:?}: {s:?}");
        assert!(s.resident <= 3 && s.resident > 0, "{policy:?}: {s:?}");
        assert!(s.hits > 0 && s.hits < s.lookups, "{policy:?}: {s:?}");
        assert_close(&want, &got, tolerance, &format!("{model} cache {policy:?}"));
    }
}

/// Every split of `model` in `dtype` against the model all on the device in `dtype`: the
/// layers placed on the host are the ones asked for, and the logits agree within `tolerance`.
fn check_splits_in(model: &str, dtype: DTypeSpec, tolerance: Bound) {
    let all = load(model, &opts_in(ExpertPlacement::FirstOnCpu(0), dtype));
    assert_eq!(all.host_expert_layers(), 0);
    let (want, feed) = greedy(&all, STEPS);
    let layers = all.config().num_hidden_layers;
    let mut splits = vec![ExpertPlacement::Cpu];
    splits.extend((1..layers).map(ExpertPlacement::FirstOnCpu));
    for placement in splits {
        let m = load(model, &opts_in(placement, dtype));
        let host: Vec<usize> = (0..layers).filter(|&l| m.experts_on_host(l)).collect();
        let asked: Vec<usize> = match placement {
            ExpertPlacement::Cpu => (0..layers).collect(),
            ExpertPlacement::FirstOnCpu(n) => (0..n).collect(),
            ExpertPlacement::Fit => Vec::new(),
        };
        assert_eq!(
            host, asked,
            "{dtype:?} {placement:?}: the layers on the host"
        );
        let got = run(&m, STEPS, &feed);
        let what = format!("{model} {dtype:?} {placement:?}");
        match tolerance {
            Bound::Logits(t) => assert_close(&want, &got, t, &what),
            Bound::Rows(t) => t.check(&want, &got, &what),
        }
    }
}

/// [`run`] with the expert cache checked at every step against the step's routing: the
/// lookups are the step's routed tokens; the hits, those routed to experts with a device copy
/// when the step began; the moves, the copies that arrived; at most `max_moves` a step, never
/// more than fit; under LRU, a copy arrives only for an expert the step routed to without one
/// and leaves only if the step did not route to it; under `auto`, only experts ever routed to
/// arrive.
fn cache_steps(m: &Model, feed: &[Vec<u32>], policy: CachePolicy) -> Vec<Vec<f32>> {
    let cache = m.expert_cache().unwrap();
    let mut before = (cache.resident_experts(), cache.stats());
    let mut ever: Vec<Vec<u64>> = Vec::new();
    let mut steps = 0;
    let rows = run_observed(m, STEPS, feed, &mut |phase, routing| {
        if phase == Phase::Before {
            before = (cache.resident_experts(), cache.stats());
            return;
        }
        steps += 1;
        let (was, st) = &before;
        let (now, s) = (cache.resident_experts(), cache.stats());
        let counts = &routing.counts;
        ever.resize(counts.len(), Vec::new());
        for (e, c) in ever.iter_mut().zip(counts) {
            e.resize(c.len(), 0);
            e.iter_mut().zip(c).for_each(|(e, c)| *e += c);
        }
        let routed: u64 = counts.iter().flatten().sum();
        let hit: u64 = (was.iter().enumerate())
            .map(|(l, r)| r.iter().map(|&e| counts[l][e]).sum::<u64>())
            .sum();
        assert_eq!(s.lookups - st.lookups, routed, "{policy:?} step {steps}");
        assert_eq!(s.hits - st.hits, hit, "{policy:?} step {steps}");
        let (mut arrived, mut left) = (Vec::new(), Vec::new());
        for l in 0..now.len() {
            arrived.extend(
                now[l]
                    .iter()
                    .filter(|e| !was[l].contains(e))
                    .map(|&e| (l, e)),
            );
            left.extend(
                was[l]
                    .iter()
                    .filter(|e| !now[l].contains(e))
                    .map(|&e| (l, e)),
            );
        }
        assert_eq!(
            s.moves - st.moves,
            arrived.len() as u64,
            "{policy:?} step {steps}"
        );
        assert!(
            arrived.len() <= cache.max_moves(),
            "{policy:?} step {steps}"
        );
        assert_eq!(s.resident, now.iter().map(Vec::len).sum::<usize>());
        assert!(s.resident <= s.capacity);
        for &(l, e) in &arrived {
            match policy {
                CachePolicy::Lru => assert!(counts[l][e] > 0, "{policy:?}: {l}/{e} unused"),
                CachePolicy::Hot => assert!(ever[l][e] > 0, "{policy:?}: {l}/{e} never routed"),
            }
        }
        if policy == CachePolicy::Lru {
            for &(l, e) in &left {
                assert_eq!(counts[l][e], 0, "LRU evicted {l}/{e}, which the step used");
            }
        }
    });
    assert_eq!(steps, STEPS + 1);
    rows
}

#[test]
fn dense_splits_match_the_model_on_one_device() {
    check_splits("tiny-mixtral", DENSE_TOLERANCE);
}

/// Issue 36, 2.4: the splits in bf16 and f16 against the model all on the device in the same
/// dtype. The device computes in its dtype, host layers in f32 on the same weights (each host
/// layer's MoE is the CPU path's bit for bit: the unit test in bora-model's moe_split.rs), so the
/// residual streams part by the dtype's rounding. Measured on tiny-mixtral as the per-row
/// largest |Δ logit| (median, 90th percentile, largest) of 45 rows: f16 (0.0078, 0.0117,
/// 0.016); bf16 (0.064, 0.12, and one row of 4.09: in that decode step the two route a token
/// to another expert, a near-tie that bf16's rounding tips). The bounds are about 1.5x, and
/// one row is let past them in bf16.
#[test]
fn half_precision_splits_match() {
    let bf16 = RowBound {
        median: 0.1,
        p90: 0.2,
        max: 0.2,
        past: 1,
    };
    let f16 = RowBound {
        median: 0.012,
        p90: 0.018,
        max: 0.025,
        past: 0,
    };
    check_splits_in("tiny-mixtral", DTypeSpec::BF16, Bound::Rows(bf16));
    check_splits_in("tiny-mixtral", DTypeSpec::F16, Bound::Rows(f16));
}

/// How close a split's logits must be to the model's on one device.
#[derive(Clone, Copy)]
enum Bound {
    /// Every logit ([`assert_close`]).
    Logits(Tolerance),
    /// Each row's largest |Δ logit|.
    Rows(RowBound),
}

/// Bounds on the per-row largest |Δ logit|: its median and 90th percentile, and its largest,
/// which `past` rows may exceed.
#[derive(Clone, Copy)]
struct RowBound {
    median: f32,
    p90: f32,
    max: f32,
    past: usize,
}

impl RowBound {
    fn check(&self, want: &[Vec<f32>], got: &[Vec<f32>], what: &str) {
        assert_eq!(want.len(), got.len());
        let mut rows: Vec<f32> = (want.iter().zip(got))
            .map(|(a, b)| {
                (a.iter().zip(b))
                    .map(|(x, y)| (x - y).abs())
                    .fold(
                        0.0,
                        |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
                    )
            })
            .collect();
        rows.sort_by(f32::total_cmp);
        let (median, p90) = (rows[rows.len() / 2], rows[rows.len() * 9 / 10]);
        let past = rows.iter().filter(|&&d| d > self.max).count();
        assert!(
            median <= self.median && p90 <= self.p90 && past <= self.past,
            "{what}: per-row |Δ logit| median {median}, 90th percentile {p90}, {past} rows over {} (largest {})",
            self.max,
            rows[rows.len() - 1]
        );
    }
}

#[test]
fn fused_checkpoint_splits_match() {
    check_splits("tiny-mixtral-fused", DENSE_TOLERANCE);
}

#[test]
fn quantized_gguf_splits_match() {
    check_splits("gguf/tiny-Q4_K_M.gguf", QUANT_TOLERANCE);
    check_splits("gguf/tiny-Q8_0.gguf", QUANT_TOLERANCE);
}

#[test]
fn the_fit_fills_a_limited_device_from_the_last_layer() {
    let model = "gguf/tiny-Q8_0.gguf";
    let source = ModelSource::Named(fixture(model).display().to_string());
    let mut o = opts(ExpertPlacement::Fit);
    let all = bora_engine::load::plan_for(&source, &o).unwrap().unwrap();
    // Unknown device memory and no limit: everything on the device.
    assert_eq!(all.host_layers(), 0);
    let i = &all.input;
    let layers = i.expert_bytes.len();
    // Room for one layer's experts beside the rest, the KV reserve and the margin.
    let want = i.dense_bytes + i.kv_reserve + i.expert_bytes[layers - 1];
    let limit = want + want / 15 + 1;
    o.device_memory_limit = Some(limit);
    let plan = bora_engine::load::plan_for(&source, &o).unwrap().unwrap();
    assert!(plan.fits);
    assert_eq!(plan.host_layers(), layers - 1, "{plan}");
    assert!(!plan.host_experts[layers - 1]);
    let text = plan.to_string();
    assert!(
        text.contains("(limited)") && text.contains("host memory: experts of layers 0"),
        "{text}"
    );
    let m = load(model, &o);
    let host: Vec<usize> = (0..layers).filter(|&l| m.experts_on_host(l)).collect();
    assert_eq!(
        host,
        (0..layers - 1).collect::<Vec<_>>(),
        "the last layer stays"
    );
    let (want, feed) = reference(model, 2);
    assert_close(&want, &run(&m, 2, &feed), QUANT_TOLERANCE, "the fit");
    // Too small for even the dense part: an error that shows the plan.
    o.device_memory_limit = Some(i.dense_bytes / 2);
    let e = bora_engine::load::plan_for(&source, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn on_the_cpu_the_flags_change_nothing() {
    let cpu = |placement| ModelOptions {
        expert_placement: placement,
        device_memory_limit: Some(1 << 20),
        ..ModelOptions::default()
    };
    let want = run(
        &load("gguf/tiny-Q4_K_M.gguf", &ModelOptions::default()),
        0,
        &[],
    );
    for placement in [ExpertPlacement::Cpu, ExpertPlacement::FirstOnCpu(1)] {
        let m = load("gguf/tiny-Q4_K_M.gguf", &cpu(placement));
        assert_eq!(m.host_expert_layers(), 0);
        assert_eq!(run(&m, 0, &[]), want, "{placement:?}");
    }
}
