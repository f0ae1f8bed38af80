//! Logits of a model over a fixed workload (a prefill step of three prompts, then decode
//! steps of all three), and their comparison within stated tolerances: for tests that run one
//! model two ways (a split between devices, another KV dtype) against each other.

use bora_model::{Batch, KvCache, Logits, Model, RoutingStats, SeqInput};

/// Where [`run_observed`]'s callback is called: before a step's forward pass (with empty
/// counts) or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    After,
}

/// |Δ logit| allowed, median and largest, between bora's kernels and candle's: f32 weights
/// differ in summation order only; quantized ones also in the activations, which bora's kernels
/// quantize to 8 bits as ggml does while candle's CPU path multiplies the dequantized weights
/// in f32 (`bora check-device`'s tolerance for quantized models in f32: 0.05 and 1.5).
pub const DENSE_TOLERANCE: Tolerance = Tolerance {
    median: 1e-5,
    max: 1e-4,
};
pub const QUANT_TOLERANCE: Tolerance = Tolerance {
    median: 0.05,
    max: 0.5,
};

#[derive(Debug, Clone, Copy)]
/// A tolerance on |Δ logit|.
pub struct Tolerance {
    pub median: f32,
    pub max: f32,
}

/// Logits of a prefill step of three prompts (every position), then `steps` decode steps of
/// all three, each fed the token given by `next` (the reference's greedy choice).
pub fn run(model: &Model, steps: usize, feed: &[Vec<u32>]) -> Vec<Vec<f32>> {
    run_steps(model, steps, feed, None)
}

/// [`run`], calling `each` before each step's forward pass ([`Phase::Before`], with empty
/// counts) and after it ([`Phase::After`], with the tokens each expert of each layer took in
/// the step: `RoutingStats::counts`, `[layer][expert]`).
pub fn run_observed(
    model: &Model,
    steps: usize,
    feed: &[Vec<u32>],
    each: &mut Observer<'_>,
) -> Vec<Vec<f32>> {
    run_steps(model, steps, feed, Some(each))
}

/// What [`run_observed`] calls around each step.
pub type Observer<'a> = dyn FnMut(Phase, &RoutingStats) + 'a;

/// [`run`], through [`Model::forward_observed`] when observed, [`Model::forward`] otherwise.
fn run_steps(
    model: &Model,
    steps: usize,
    feed: &[Vec<u32>],
    mut each: Option<&mut Observer<'_>>,
) -> Vec<Vec<f32>> {
    let cfg = model.config();
    let mut forward = |batch: &Batch, cache: &mut KvCache| {
        let rows = match each.as_deref_mut() {
            None => model.forward(batch, cache),
            Some(each) => {
                let mut stats = RoutingStats::new(cfg.num_hidden_layers, cfg.num_local_experts);
                each(Phase::Before, &stats);
                let rows = model.forward_observed(batch, cache, &mut stats);
                each(Phase::After, &stats);
                rows
            }
        };
        rows.unwrap().to_vec2::<f32>().unwrap()
    };
    let lens = [5usize, 11, 17];
    let v = model.config().vocab_size;
    let mut cache: KvCache = model.new_cache(3, 17 + steps + 1).unwrap();
    let slots: Vec<Vec<u32>> = (0..3).map(|s| cache.slot(s)).collect();
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &l)| {
            (0..l)
                .map(|j| (3 + (s * 7919 + j * 104_729) % (v - 3)) as u32)
                .collect()
        })
        .collect();
    let batch = Batch {
        seqs: prompts
            .iter()
            .zip(&slots)
            .map(|(p, b)| SeqInput {
                tokens: p.clone(),
                start_pos: 0,
                blocks: b.clone(),
                logits: Logits::All,
            })
            .collect(),
    };
    let mut rows = forward(&batch, &mut cache);
    for (step, tokens) in feed.iter().enumerate().take(steps) {
        let batch = Batch {
            seqs: tokens
                .iter()
                .zip(&slots)
                .zip(&lens)
                .map(|((&t, b), &l)| SeqInput {
                    tokens: vec![t],
                    start_pos: l + step,
                    blocks: b.clone(),
                    logits: Logits::Last,
                })
                .collect(),
        };
        rows.extend(forward(&batch, &mut cache));
    }
    rows
}

pub fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Asserts that `b`'s logits are within `tol` of `a`'s, and that every row's greedy token is
/// the same where `a`'s lead over its second choice exceeds twice the largest difference.
pub fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: Tolerance, what: &str) {
    assert_eq!(a.len(), b.len());
    let mut d: Vec<f32> = a
        .iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .collect();
    d.sort_by(f32::total_cmp);
    let (median, max) = (d[d.len() / 2], d[d.len() - 1]);
    assert!(
        median <= tol.median && max <= tol.max,
        "{what}: |Δ logit| median {median}, max {max}, allowed {tol:?}"
    );
    for (x, y) in a.iter().zip(b) {
        let mut sorted = x.clone();
        sorted.sort_by(|p, q| q.total_cmp(p));
        if sorted[0] - sorted[1] > 2.0 * max {
            assert_eq!(
                argmax(x),
                argmax(y),
                "{what}: a clear greedy choice changed"
            );
        }
    }
}

/// `model`'s logits over [`run`]'s workload decoding its own greedy tokens for `steps` steps,
/// and the tokens each decode step was fed (to give another model the same inputs).
pub fn greedy(model: &Model, steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let mut feed: Vec<Vec<u32>> = Vec::new();
    let mut rows = run(model, 0, &feed);
    // The last prompt row of each sequence: prompts of 5, 11 and 17 tokens.
    let ends = [4usize, 15, 32];
    feed.push(ends.iter().map(|&i| argmax(&rows[i])).collect());
    for k in 1..=steps {
        rows = run(model, k, &feed);
        let n = rows.len();
        feed.push(rows[n - 3..].iter().map(|r| argmax(r)).collect());
    }
    (rows, feed)
}
