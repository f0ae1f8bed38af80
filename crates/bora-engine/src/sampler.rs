//! Choosing the next token from logits: greedy at temperature 0, otherwise a draw from the
//! tempered softmax (optionally cut to top-k / top-p) with a seeded generator, so that the same
//! seed and request give the same tokens.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{EngineError, Result};

/// Sampling settings, validated by [`Sampler::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy; higher flattens the distribution.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1 keeps all).
    pub top_p: f32,
    /// Keep this many most probable tokens (0 keeps all).
    pub top_k: usize,
    /// Seed of the generator: the same seed gives the same draws.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Chooses tokens from logits with its own seeded generator.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; an error names a parameter out of range.
    pub fn new(params: SamplingParams) -> Result<Self> {
        if !params.temperature.is_finite() || params.temperature < 0.0 {
            return Err(EngineError::Sampling {
                name: "temperature",
                reason: format!("{} is not a number >= 0", params.temperature),
            });
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(EngineError::Sampling {
                name: "top_p",
                reason: format!("{} is not in (0, 1]", params.top_p),
            });
        }
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// The next token for one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v / t))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, v)| (v - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    acc += p;
                    acc >= self.params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, &p) in probs.iter().enumerate() {
            if u < p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[probs.len() - 1].0
    }
}

/// The index of the largest value; the lowest index among equals.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            })
            .unwrap();
            (0..32).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(
            draw(7).iter().any(|&t| t != 1),
            "temperature 1 must sometimes leave the argmax"
        );
    }

    /// Logits under which an uncut sampler often draws the tail (tokens 2 and 3 take about
    /// 16% of draws at temperature 1), so that a cut that does nothing fails here.
    #[test]
    fn top_k_and_top_p_cut() {
        let logits = [2.0, 1.0, 0.0, 0.0];
        let draws = |params: SamplingParams| -> Vec<u32> {
            let mut s = Sampler::new(params).unwrap();
            (0..400).map(|_| s.sample(&logits)).collect()
        };
        let uncut = draws(SamplingParams {
            temperature: 1.0,
            seed: 5,
            ..Default::default()
        });
        assert!(uncut.iter().filter(|&&t| t >= 2).count() > 20, "{uncut:?}");
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 2,
                seed: 5,
                ..Default::default()
            },
            // Probabilities 0.61, 0.22, 0.08, 0.08: 0.8 keeps the first two.
            SamplingParams {
                temperature: 1.0,
                top_p: 0.8,
                seed: 5,
                ..Default::default()
            },
        ] {
            let got = draws(params.clone());
            assert!(got.iter().all(|&t| t < 2), "{params:?}: {got:?}");
            assert!(got.contains(&0) && got.contains(&1), "{params:?}: {got:?}");
        }
        // The tightest cuts keep the most probable token only.
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 0.5,
                ..Default::default()
            },
        ] {
            assert!(draws(params).iter().all(|&t| t == 0));
        }
    }

    #[test]
    fn bad_params_are_named() {
        let e = Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("temperature"));
        let e = Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("top_p"));
    }
}
