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
use bora_tests::steps::{assert_close, greedy, run, Tolerance, DENSE_TOLERANCE, QUANT_TOLERANCE};

/// Candle's CPU path standing in for a GPU, f32, experts placed as `placement` says.
fn opts(placement: ExpertPlacement) -> ModelOptions {
    ModelOptions {
        dtype: Some(DTypeSpec::F32),
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
    let (want, feed) = reference(model, STEPS);
    let layers = load(model, &opts(ExpertPlacement::Cpu))
        .config()
        .num_hidden_layers;
    let mut splits = vec![ExpertPlacement::Cpu];
    splits.extend((1..layers).map(ExpertPlacement::FirstOnCpu));
    for placement in splits {
        let m = load(model, &opts(placement));
        let host = match placement {
            ExpertPlacement::Cpu => layers,
            ExpertPlacement::FirstOnCpu(n) => n,
            ExpertPlacement::Fit => 0,
        };
        assert_eq!(m.host_expert_layers(), host, "{placement:?}");
        let got = run(&m, STEPS, &feed);
        assert_close(&want, &got, tolerance, &format!("{model} {placement:?}"));
    }
    // An expert cache whose copies change between steps, under each policy.
    for policy in [CachePolicy::Hot, CachePolicy::Lru] {
        let mut m = load(model, &opts(ExpertPlacement::Cpu));
        let per_expert = m.weights().layers[0].experts.expert_bytes() as u64;
        assert!(m.set_expert_cache(policy, 3 * per_expert));
        let got = run(&m, STEPS, &feed);
        let s = m.expert_cache_stats().unwrap();
        assert_eq!(s.capacity, 3);
        assert!(s.moves >= 3, "{policy:?}: {s:?}");
        assert!(s.resident <= 3 && s.resident > 0, "{policy:?}: {s:?}");
        assert!(s.hits > 0 && s.hits < s.lookups, "{policy:?}: {s:?}");
        assert_close(&want, &got, tolerance, &format!("{model} cache {policy:?}"));
    }
}

#[test]
fn dense_splits_match_the_model_on_one_device() {
    check_splits("tiny-mixtral", DENSE_TOLERANCE);
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
    assert_eq!(m.host_expert_layers(), layers - 1);
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
