//! `bora check-device`: the forward pass on a device (CUDA) against bora's CPU path on the
//! same weights: logits of a prefill step and of decode steps of several sequences at once
//! (the paged KV cache, the batched decode attention), and the greedy tokens. On the CPU it
//! checks candle's path (what CUDA runs, with candle's CPU kernels) against bora's kernels.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_core::{DTypeSpec, DeviceSpec};
use bora_engine::{ModelOptions, ModelSource};
use bora_model::{Batch, Logits, Model, SeqInput};
use bora_weights::WeightFormat;
use candle_core::{DType, Device};
use serde_json::{json, Value};

const DEFAULT_MODELS: &[&str] = &[
    "models/fixtures/tiny-mixtral",
    "models/fixtures/tiny-mixtral-fused",
    "models/fixtures/gguf/tiny-F16.gguf",
    "models/fixtures/gguf/tiny-Q8_0.gguf",
    "models/fixtures/gguf/tiny-Q4_K_M.gguf",
    "models/fixtures/gguf/tiny-Q6_K.gguf",
];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Models to check (directories or GGUF files; default: the committed fixtures).
    #[arg(long, value_delimiter = ',')]
    models: Vec<PathBuf>,
    /// The device checked against the CPU path: cuda, cuda:N, or cpu (candle's path).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// The dtype of dense weights and activations on the device (f32, bf16, f16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Decode steps after the prefill.
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// Allowed |Δ logit| at the median, the 99th percentile and the largest, as
    /// `MEDIAN,P99,MAX`. Default for f32 dense weights: 1e-4,1e-3,1e-3, and every greedy token
    /// the same. For quantized weights with f32 activations: 0.05,0.3,1.5 and 90% of greedy
    /// tokens the same; with 16-bit activations (bf16 keeps 8 significant bits) 0.1,1.0,4.0
    /// and 85%. The paths round differently (bora's CPU kernels quantize every product's
    /// activations to 8 bits, candle's quantized GEMMs to 16 bits or not at all), and in
    /// these random fixtures (logits within about ±5) a token whose two best experts nearly
    /// tie takes the other one when a value moves in its last bits, moving that position's
    /// logits by up to about 1 (bora's CPU path against llama.cpp measured the same).
    #[arg(long, value_delimiter = ',', value_name = "MEDIAN,P99,MAX")]
    tolerance: Option<Vec<f32>>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where the checked model's experts go (`--cpu-moe`, `--n-cpu-moe N`): the split step,
    /// host experts beside a model on the device, checked against the CPU path too.
    #[command(flatten)]
    placement: crate::load::PlacementArgs,
}

/// Allowed differences, and the share of greedy tokens that must agree.
#[derive(Clone, Copy)]
struct Tolerance {
    median: f32,
    p99: f32,
    max: f32,
    agree: f64,
}

/// What the two paths gave for one model.
struct Outcome {
    model: String,
    kind: String,
    /// |Δ logit| over every compared position and token: median, 99th percentile, largest.
    median: f32,
    p99: f32,
    max: f32,
    tol: Tolerance,
    /// Greedy tokens (argmax of each position's logits) that agree, of those compared.
    agree: usize,
    compared: usize,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.median <= self.tol.median
            && self.p99 <= self.tol.p99
            && self.max <= self.tol.max
            && self.agree as f64 >= self.tol.agree * self.compared as f64
    }
}

pub fn main(a: Args) -> Result<()> {
    let spec: DeviceSpec = a.device.parse()?;
    // The device's own error (no driver, no such GPU) before any model is read.
    spec.open()?;
    let dtype: DTypeSpec = a.dtype.parse()?;
    if a.tolerance.as_ref().is_some_and(|t| t.len() != 3) {
        bail!("--tolerance takes three numbers: MEDIAN,P99,MAX");
    }
    let models: Vec<PathBuf> = if a.models.is_empty() {
        DEFAULT_MODELS.iter().map(PathBuf::from).collect()
    } else {
        a.models.clone()
    };
    let mut outcomes = Vec::new();
    for m in &models {
        let reference = load(
            m,
            ModelOptions {
                dtype: Some(DTypeSpec::F32),
                ..ModelOptions::default()
            },
        )?;
        let mut opts = ModelOptions {
            device: spec,
            dtype: Some(dtype),
            candle_on_cpu: true,
            ..ModelOptions::default()
        };
        a.placement.apply(&mut opts)?;
        let checked = load(m, opts)?;
        let quantized = checked.weights().layers.iter().any(|l| {
            matches!(&l.q, bora_weights::Matrix::Quant(_))
                || matches!(&l.q, bora_weights::Matrix::Host(h) if matches!(h.format(), WeightFormat::Quant(_)))
        });
        let kind = format!(
            "{} {}",
            if quantized { "quantized" } else { "dense" },
            a.dtype
        );
        let exact = dtype == DTypeSpec::F32 && !quantized;
        let (median, p99, max, agree) = match (&a.tolerance, exact, dtype) {
            (Some(t), ..) => (t[0], t[1], t[2], if exact { 1.0 } else { 0.9 }),
            (None, true, _) => (1e-4, 1e-3, 1e-3, 1.0),
            (None, false, DTypeSpec::F32) => (0.05, 0.3, 1.5, 0.9),
            (None, false, _) => (0.1, 1.0, 4.0, 0.85),
        };
        let tol = Tolerance {
            median,
            p99,
            max,
            agree,
        };
        let o = compare(&reference, &checked, a.steps, tol)
            .with_context(|| format!("checking {}", m.display()))?;
        outcomes.push(Outcome {
            model: m.display().to_string(),
            kind,
            ..o
        });
    }
    let all = outcomes.iter().all(Outcome::passed);
    if a.json {
        let v: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "model": o.model, "kind": o.kind,
                    "abs_diff": {"median": o.median, "p99": o.p99, "max": o.max},
                    "tolerance": {"median": o.tol.median, "p99": o.tol.p99, "max": o.tol.max,
                                  "greedy_agree": o.tol.agree},
                    "greedy_agree": o.agree, "greedy_compared": o.compared,
                    "passed": o.passed(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"device": a.device, "models": v, "passed": all}))?
        );
    } else {
        println!(
            "{} against bora's CPU path (f32): |Δ logit| over every position and token",
            a.device
        );
        println!(
            "{:<40} {:<13} {:>20} {:>20} {:>10}  result",
            "model", "kind", "median/p99/max", "tolerance", "argmax"
        );
        for o in &outcomes {
            println!(
                "{:<40} {:<13} {:>20} {:>20} {:>6}/{:<3}  {}",
                o.model,
                o.kind,
                format!("{:.1e}/{:.1e}/{:.1e}", o.median, o.p99, o.max),
                format!("{:.0e}/{:.0e}/{:.0e}", o.tol.median, o.tol.p99, o.tol.max),
                o.agree,
                o.compared,
                if o.passed() { "ok" } else { "FAILED" }
            );
        }
    }
    if !all {
        bail!("the device's results differ from the CPU path's beyond the tolerance");
    }
    Ok(())
}

fn load(path: &Path, opts: ModelOptions) -> Result<Model> {
    // The weights alone: the fixtures' fused checkpoint carries no tokenizer.
    let source = ModelSource::Named(path.display().to_string());
    Ok(Model::new(bora_engine::load::load_weights(
        &source,
        &opts,
        true,
        &mut |_| {},
    )?)?)
}

/// Three sequences of different lengths: one prefill step of all three (logits of every
/// position), then `steps` decode steps of all three at once, each fed the reference's greedy
/// token (so that the two paths see the same inputs where a near-tie would make them diverge).
fn compare(reference: &Model, checked: &Model, steps: usize, tol: Tolerance) -> Result<Outcome> {
    let cfg = reference.config();
    let v = cfg.vocab_size;
    let lens = [5usize, 11, 17];
    let max_len = lens.iter().max().copied().unwrap_or(0) + steps + 1;
    if max_len > cfg.context() {
        bail!("the model's context is shorter than the check's {max_len} positions");
    }
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &l)| {
            (0..l)
                .map(|j| (3 + (s * 7919 + j * 104_729) % (v - 3)) as u32)
                .collect()
        })
        .collect();
    let mut caches = [
        reference.new_cache(lens.len(), max_len)?,
        checked.new_cache(lens.len(), max_len)?,
    ];
    let slots: Vec<Vec<u32>> = (0..lens.len()).map(|s| caches[0].slot(s)).collect();
    let prefill = Batch {
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
    let logits = |m: &Model, b: &Batch, c: &mut bora_model::KvCache| -> Result<Vec<Vec<f32>>> {
        Ok(m.forward(b, c)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    };
    let (r, c) = caches.split_at_mut(1);
    let mut pairs = vec![(
        logits(reference, &prefill, &mut r[0])?,
        logits(checked, &prefill, &mut c[0])?,
    )];
    // The last row of each prompt gives its first token.
    let mut ends = Vec::new();
    let mut at = 0;
    for &l in &lens {
        at += l;
        ends.push(at - 1);
    }
    let mut next: Vec<u32> = ends.iter().map(|&i| argmax(&pairs[0].0[i]).0).collect();
    for step in 0..steps {
        let batch = Batch {
            seqs: next
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
        let (lr, lc) = (
            logits(reference, &batch, &mut r[0])?,
            logits(checked, &batch, &mut c[0])?,
        );
        next = lr.iter().map(|row| argmax(row).0).collect();
        pairs.push((lr, lc));
    }
    let (mut agree, mut compared) = (0, 0);
    let mut diffs = Vec::new();
    for (a, b) in &pairs {
        for (ra, rb) in a.iter().zip(b) {
            compared += 1;
            agree += usize::from(argmax(ra).0 == argmax(rb).0);
            diffs.extend(ra.iter().zip(rb).map(|(x, y)| {
                let d = (x - y).abs();
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    d
                }
            }));
        }
    }
    diffs.sort_by(f32::total_cmp);
    let at = |q: f64| diffs[((diffs.len() - 1) as f64 * q) as usize];
    Ok(Outcome {
        model: String::new(),
        kind: String::new(),
        median: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        tol,
        agree,
        compared,
    })
}

/// The largest entry's index and its lead over the second largest.
fn argmax(row: &[f32]) -> (u32, f32) {
    let (mut best, mut first, mut second) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > first {
            second = first;
            first = x;
            best = i;
        } else if x > second {
            second = x;
        }
    }
    (best as u32, first - second)
}
