//! `bora bench-moe --skew`: the MoE block timed under routing distributions chosen by the
//! bench instead of by the router: uniform, one hot expert, or the pairs of experts a routing
//! trace (`bora routes`) recorded for one layer. The router is replaced by one that reads the
//! choice off the input (logits = the input's first `E` values), and each token's input puts
//! its two experts' logits on top, so the experts do the work of that routing exactly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bora_model::{moe_block, RoutingStats};
use bora_weights::{HostMatrix, Matrix, MixtralWeights, WeightDType};
use candle_core::{DType, Device, Tensor};
use rand::{RngExt, SeedableRng};

/// A routing distribution.
#[derive(Debug, Clone)]
pub enum Skew {
    /// Each token's experts drawn uniformly (without repeats).
    Uniform,
    /// Expert 0 in every token's choice, the others drawn uniformly.
    Hot,
    /// The expert sets of one layer of a trace, drawn with the frequencies they had there.
    Trace {
        path: PathBuf,
        layer: u16,
        sets: Vec<(Vec<u32>, u64)>,
    },
}

impl Skew {
    /// `uniform`, `hot` or `trace:PATH` (the trace's most imbalanced layer).
    pub fn parse(s: &str, k: usize) -> Result<Self> {
        Ok(match s {
            "uniform" => Skew::Uniform,
            "hot" => Skew::Hot,
            _ => match s.strip_prefix("trace:") {
                Some(path) => read_trace(PathBuf::from(path), k)?,
                None => anyhow::bail!("--skew {s}: use uniform, hot or trace:PATH.parquet"),
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            Skew::Uniform => "uniform".into(),
            Skew::Hot => "one hot expert".into(),
            Skew::Trace { path, layer, .. } => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                format!("{name} layer {layer}")
            }
        }
    }

    /// `t` tokens' expert sets of `k` among `e`.
    fn draw(&self, t: usize, e: usize, k: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<u32>> {
        let uniform = |rng: &mut rand::rngs::StdRng, first: Option<u32>| {
            let mut set: Vec<u32> = first.into_iter().collect();
            while set.len() < k.min(e) {
                let x = rng.random_range(0..e as u32);
                if !set.contains(&x) {
                    set.push(x);
                }
            }
            set
        };
        match self {
            Skew::Uniform => (0..t).map(|_| uniform(rng, None)).collect(),
            Skew::Hot => (0..t).map(|_| uniform(rng, Some(0))).collect(),
            Skew::Trace { sets, .. } => {
                let total: u64 = sets.iter().map(|(_, n)| n).sum();
                (0..t)
                    .map(|_| {
                        let mut x = rng.random_range(0..total.max(1));
                        for (set, n) in sets {
                            if x < *n {
                                return set.clone();
                            }
                            x -= n;
                        }
                        uniform(rng, None)
                    })
                    .collect()
            }
        }
    }
}

/// The expert sets of a trace's most imbalanced layer.
fn read_trace(path: PathBuf, k: usize) -> Result<Skew> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{UInt16Type, UInt32Type};
    let file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open {}", crate::load::shown(&path)))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    // (layer, sequence, position) -> experts
    let mut tokens: HashMap<(u16, u32, u32), Vec<u32>> = HashMap::new();
    for batch in reader {
        let b = batch?;
        let col = |name: &str| {
            b.column_by_name(name)
                .with_context(|| format!("the trace has no column {name}"))
        };
        let (seq, pos) = (
            col("sequence")?.as_primitive::<UInt32Type>(),
            col("position")?.as_primitive::<UInt32Type>(),
        );
        let (layer, expert) = (
            col("layer")?.as_primitive::<UInt16Type>(),
            col("expert")?.as_primitive::<UInt16Type>(),
        );
        for i in 0..b.num_rows() {
            tokens
                .entry((layer.value(i), seq.value(i), pos.value(i)))
                .or_default()
                .push(expert.value(i) as u32);
        }
    }
    let mut by_layer: HashMap<u16, HashMap<Vec<u32>, u64>> = HashMap::new();
    for ((layer, _, _), mut set) in tokens {
        if set.len() != k {
            anyhow::bail!(
                "the trace chose {} experts a token; this shape takes {k}",
                set.len()
            );
        }
        set.sort_unstable();
        *by_layer.entry(layer).or_default().entry(set).or_default() += 1;
    }
    let imbalance = |sets: &HashMap<Vec<u32>, u64>| {
        let mut load: HashMap<u32, u64> = HashMap::new();
        for (set, n) in sets {
            for &e in set {
                *load.entry(e).or_default() += n;
            }
        }
        load.values().copied().max().unwrap_or(0) as f64 / load.values().sum::<u64>().max(1) as f64
    };
    let (layer, sets) = by_layer
        .into_iter()
        .max_by(|a, b| imbalance(&a.1).total_cmp(&imbalance(&b.1)))
        .with_context(|| format!("{} has no rows", crate::load::shown(&path)))?;
    let mut sets: Vec<(Vec<u32>, u64)> = sets.into_iter().collect();
    sets.sort();
    Ok(Skew::Trace { path, layer, sets })
}

/// One measurement.
pub struct SkewRun {
    pub skew: String,
    pub tokens: usize,
    pub step: f64,
    /// Experts with a token, and the most tokens one expert took.
    pub hit: usize,
    pub hottest: u64,
}

/// Times layer 0 of `w` under each skew at each size.
pub fn run(
    w: &MixtralWeights,
    skews: &[Skew],
    tokens: &[usize],
    iters: usize,
    act: DType,
    device: &Device,
) -> Result<Vec<SkewRun>> {
    let layer = &w.layers[0];
    let cfg = &w.config;
    let (h, e, k) = (
        cfg.hidden_size,
        cfg.num_local_experts,
        cfg.num_experts_per_tok,
    );
    anyhow::ensure!(e <= h, "the router reads {e} experts off {h} hidden values");
    let mut ident = vec![0f32; e * h];
    for x in 0..e {
        ident[x * h + x] = 1.0;
    }
    let router = match &layer.router {
        Matrix::Host(_) => Matrix::Host(HostMatrix::from_f32(ident, e, h, WeightDType::F32)),
        _ => Matrix::Tensor(Tensor::from_vec(ident, (e, h), device)?.to_dtype(act)?),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut out = Vec::new();
    for skew in skews {
        for &t in tokens {
            let sets = skew.draw(t, e, k, &mut rng);
            let mut x = vec![0f32; t * h];
            for (row, set) in x.chunks_exact_mut(h).zip(&sets) {
                for (r, &ex) in set.iter().enumerate() {
                    row[ex as usize] = 8.0 - r as f32;
                }
            }
            let x = Tensor::from_vec(x, (t, h), &Device::Cpu)?
                .to_dtype(act)?
                .to_device(device)?;
            // The routing the block sees is the one drawn.
            let mut stats = RoutingStats::new(1, e);
            moe_block(&router, &layer.experts, k, &x, 0, Some(&mut stats))?;
            let mut load = vec![0u64; e];
            for set in &sets {
                for &ex in set {
                    load[ex as usize] += 1;
                }
            }
            anyhow::ensure!(
                stats.counts[0] == load,
                "the block routed otherwise than drawn"
            );
            device.synchronize()?;
            let start = Instant::now();
            for _ in 0..iters.max(1) {
                let y = moe_block(&router, &layer.experts, k, &x, 0, None)?;
                std::hint::black_box(y.to_dtype(DType::F32)?);
            }
            device.synchronize()?;
            out.push(SkewRun {
                skew: skew.name(),
                tokens: t,
                step: start.elapsed().as_secs_f64() / iters.max(1) as f64,
                hit: load.iter().filter(|&&n| n > 0).count(),
                hottest: load.iter().copied().max().unwrap_or(0),
            });
        }
    }
    Ok(out)
}
