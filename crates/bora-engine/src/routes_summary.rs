//! What a routing trace says, gathered step by step as it is made (or as a Parquet trace is read
//! back): per layer the experts' shares and imbalance, the co-activation of expert pairs, the
//! entropy of the load and of the router, the share of tokens routed otherwise than the token
//! before them, and the load over time.

use std::collections::HashMap;

use serde::Serialize;

use crate::routes::StepRoutes;

/// The summary of a trace; [`RouteSummary::add`] takes its steps in order.
#[derive(Debug, Clone)]
pub struct RouteSummary {
    layers: usize,
    experts: usize,
    /// Tokens per point of the load's time series.
    window: u64,
    /// `[layer][expert]` choices.
    counts: Vec<Vec<u64>>,
    /// `[layer][i * E + j]` tokens that chose both i and j (i != j; symmetric).
    coact: Vec<Vec<u64>>,
    /// `[layer]`: tokens with a token before them in their sequence, and those of them whose
    /// experts differ from that token's.
    follows: Vec<u64>,
    changes: Vec<u64>,
    /// `[layer]`: the router's entropy summed over tokens (when the trace has `probs`).
    router_entropy: Vec<f64>,
    with_probs: bool,
    /// Tokens seen (each once, not per layer).
    tokens: u64,
    /// The load per window of `window` tokens: `[point][layer][expert]`.
    series: Vec<Vec<Vec<u64>>>,
    /// Each sequence's last token: its position and its experts per layer (sorted).
    last: HashMap<u32, (u32, Vec<Vec<u16>>)>,
}

/// The numbers of a summary, as `summary.json` holds them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryNumbers {
    /// Tokens traced.
    pub tokens: u64,
    /// Layers.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// `[layer][expert]`: the expert's share of the layer's choices.
    pub shares: Vec<Vec<f64>>,
    /// `[layer]`: the hottest expert's share over the uniform share (1 is perfect balance).
    pub imbalance: Vec<f64>,
    /// `[layer]`: the entropy of the layer's load in bits (log2(E) is perfect balance).
    pub load_entropy_bits: Vec<f64>,
    /// `[layer]`: the router's mean entropy per token in bits (when the trace kept `probs`).
    pub router_entropy_bits: Option<Vec<f64>>,
    /// `[layer][i][j]`: the share of tokens that chose both experts i and j.
    pub coactivation: Vec<Vec<Vec<f64>>>,
    /// `[layer]`: the share of tokens whose experts differ from the token before them.
    pub change_rate: Vec<f64>,
    /// Tokens per point of `load_series` (the last point also holds a remainder of under half
    /// a window).
    pub series_window: u64,
    /// `[point][layer][expert]`: the experts' shares over each window of tokens.
    pub load_series: Vec<Vec<Vec<f64>>>,
}

impl RouteSummary {
    /// An empty summary of a model with `layers` layers of `experts` experts; the load's time
    /// series has a point per `window` tokens.
    pub fn new(layers: usize, experts: usize, window: u64) -> Self {
        Self {
            layers,
            experts,
            window: window.max(1),
            counts: vec![vec![0; experts]; layers],
            coact: vec![vec![0; experts * experts]; layers],
            follows: vec![0; layers],
            changes: vec![0; layers],
            router_entropy: vec![0.0; layers],
            with_probs: false,
            tokens: 0,
            series: Vec::new(),
            last: HashMap::new(),
        }
    }

    /// Adds a step of a trace (rows grouped by layer, each token's ranks together).
    pub fn add(&mut self, step: &StepRoutes) {
        let (l_n, e_n) = (self.layers, self.experts);
        let mut i = 0;
        // Each token's experts per layer, gathered from its rows.
        let mut tokens: Vec<(u32, u32)> = Vec::new();
        let mut index: HashMap<(u32, u32), usize> = HashMap::new();
        let mut chosen: Vec<Vec<Vec<u16>>> = Vec::new();
        while i < step.len() {
            let (s, p, l) = (step.sequence[i], step.position[i], step.layer[i] as usize);
            let mut j = i;
            while j < step.len()
                && step.sequence[j] == s
                && step.position[j] == p
                && step.layer[j] as usize == l
            {
                j += 1;
            }
            if l >= l_n {
                i = j;
                continue;
            }
            let k = *index.entry((s, p)).or_insert_with(|| {
                tokens.push((s, p));
                chosen.push(vec![Vec::new(); l_n]);
                tokens.len() - 1
            });
            let mut set: Vec<u16> = step.expert[i..j].to_vec();
            set.sort_unstable();
            for &e in &set {
                if (e as usize) < e_n {
                    self.counts[l][e as usize] += 1;
                }
            }
            for (x, &a) in set.iter().enumerate() {
                for &b in &set[x + 1..] {
                    if (a as usize) < e_n && (b as usize) < e_n {
                        self.coact[l][a as usize * e_n + b as usize] += 1;
                        self.coact[l][b as usize * e_n + a as usize] += 1;
                    }
                }
            }
            if !step.probs.is_empty() {
                self.with_probs = true;
                let row = &step.probs[i * step.experts..(i + 1) * step.experts];
                self.router_entropy[l] += entropy_bits(row.iter().map(|&p| p as f64));
            }
            chosen[k][l] = set;
            i = j;
        }
        // Tokens in order within each sequence (a step holds consecutive positions).
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&k| tokens[k]);
        for k in order {
            let (s, p) = tokens[k];
            let sets = std::mem::take(&mut chosen[k]);
            if let Some((lp, prev)) = self.last.get(&s) {
                if *lp + 1 == p {
                    for l in 0..l_n {
                        self.follows[l] += 1;
                        if prev[l] != sets[l] {
                            self.changes[l] += 1;
                        }
                    }
                }
            }
            let point = (self.tokens / self.window) as usize;
            if self.series.len() <= point {
                self.series.push(vec![vec![0; e_n]; l_n]);
            }
            for (l, set) in sets.iter().enumerate() {
                for &e in set {
                    if (e as usize) < e_n {
                        self.series[point][l][e as usize] += 1;
                    }
                }
            }
            self.tokens += 1;
            self.last.insert(s, (p, sets));
        }
    }

    /// The numbers.
    pub fn numbers(&self) -> SummaryNumbers {
        let share = |row: &[u64]| -> Vec<f64> {
            let total: u64 = row.iter().sum();
            row.iter()
                .map(|&c| {
                    if total == 0 {
                        0.0
                    } else {
                        c as f64 / total as f64
                    }
                })
                .collect()
        };
        let shares: Vec<Vec<f64>> = self.counts.iter().map(|r| share(r)).collect();
        let e = self.experts.max(1) as f64;
        let t = self.tokens.max(1) as f64;
        SummaryNumbers {
            tokens: self.tokens,
            layers: self.layers,
            experts: self.experts,
            imbalance: shares
                .iter()
                .map(|s| s.iter().copied().fold(0.0, f64::max) * e)
                .collect(),
            load_entropy_bits: shares
                .iter()
                .map(|s| entropy_bits(s.iter().copied()))
                .collect(),
            router_entropy_bits: self
                .with_probs
                .then(|| self.router_entropy.iter().map(|h| h / t).collect()),
            coactivation: self
                .coact
                .iter()
                .map(|m| {
                    m.chunks(self.experts.max(1))
                        .map(|r| r.iter().map(|&c| c as f64 / t).collect())
                        .collect()
                })
                .collect(),
            change_rate: self
                .changes
                .iter()
                .zip(&self.follows)
                .map(|(&c, &f)| if f == 0 { 0.0 } else { c as f64 / f as f64 })
                .collect(),
            series_window: self.window,
            load_series: self
                .series_points()
                .iter()
                .map(|p| p.iter().map(|r| share(r)).collect())
                .collect(),
            shares,
        }
    }
}

impl RouteSummary {
    /// The load's time series by window: a last window of under half a window's tokens joins
    /// the one before it (a handful of tokens' shares would be noise in the plot).
    fn series_points(&self) -> Vec<Vec<Vec<u64>>> {
        let mut points = self.series.clone();
        let before_last = points.len().saturating_sub(1) as u64 * self.window;
        if points.len() > 1 && (self.tokens - before_last) * 2 < self.window {
            if let Some(last) = points.pop() {
                if let Some(prev) = points.last_mut() {
                    for (row, add) in prev.iter_mut().zip(last) {
                        for (c, a) in row.iter_mut().zip(add) {
                            *c += a;
                        }
                    }
                }
            }
        }
        points
    }
}

/// The entropy in bits of a distribution (zeros count for nothing).
fn entropy_bits(p: impl Iterator<Item = f64>) -> f64 {
    -p.filter(|&x| x > 0.0).map(|x| x * x.log2()).sum::<f64>()
}
