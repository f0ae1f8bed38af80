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
    ///
    /// Never sorts the whole vocabulary: tokens a grammar forbade (`-inf`) are dropped first;
    /// with no cut the draw walks the rest in token order; a cut sorts only the most probable
    /// few (top-k by selection, top-p by a selection widened until it holds the mass).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > f32::NEG_INFINITY)
            .map(|(i, &v)| (i as u32, v / t))
            .collect();
        if cand.is_empty() {
            // Every token forbidden (or NaN): the argmax is the only answer there is.
            return argmax(logits);
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let k = match self.params.top_k {
            0 => cand.len(),
            k => k.min(cand.len()),
        };
        let top_p = self.params.top_p;
        if k < cand.len() || top_p < 1.0 {
            let kept = most_probable(&mut cand, k, max, top_p);
            cand.truncate(kept);
        }
        let probs: Vec<f32> = cand.iter().map(|&(_, v)| (v - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, &p) in probs.iter().enumerate() {
            if u < p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[cand.len() - 1].0
    }
}

/// Puts the most probable candidates first and returns how many to keep: the `k` best (top-k),
/// and of those the fewest, best first, whose share of the `k`'s mass reaches `top_p`. Sorts
/// only a prefix: the best `n` by selection, widened while their share falls short of `top_p`.
/// Ties go to the lower token id, so the same logits always keep the same tokens.
fn most_probable(cand: &mut [(u32, f32)], k: usize, max: f32, top_p: f32) -> usize {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let weight = |c: &(u32, f32)| (c.1 - max).exp();
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, order);
    }
    if top_p >= 1.0 {
        return k;
    }
    let cand = &mut cand[..k];
    let need = top_p * cand.iter().map(weight).sum::<f32>();
    let mut n = k.min(64);
    loop {
        if n < k {
            cand.select_nth_unstable_by(n - 1, order);
        }
        cand[..n].sort_by(order);
        let mut acc = 0.0;
        for (i, c) in cand[..n].iter().enumerate() {
            acc += weight(c);
            if acc >= need {
                return i + 1;
            }
        }
        if n == k {
            return k;
        }
        n = (n * 8).min(k);
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

    /// The distribution a sampler must draw from, computed here independently in f64:
    /// softmax(logits / T), cut to the `top_k` most probable, then to the smallest most
    /// probable set whose mass reaches `top_p`, renormalized.
    fn reference(logits: &[f32], t: f64, top_k: usize, top_p: f64) -> Vec<f64> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if top_k > 0 {
            order.truncate(top_k);
        }
        let max = logits[order[0]] as f64 / t;
        let w: Vec<f64> = order
            .iter()
            .map(|&i| (logits[i] as f64 / t - max).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let (mut kept, mut acc) = (0, 0.0);
        for p in &w {
            acc += p / total;
            kept += 1;
            if acc >= top_p {
                break;
            }
        }
        let kept_total: f64 = w[..kept].iter().sum();
        let mut probs = vec![0.0; logits.len()];
        for (j, &i) in order[..kept].iter().enumerate() {
            probs[i] = w[j] / kept_total;
        }
        probs
    }

    /// Pearson's chi-square of `n` seeded draws against `expected`, and the critical value at
    /// p = 0.001 for its degrees of freedom (Wilson-Hilferty); infinite where a token the
    /// reference gives no mass was drawn.
    fn chi_square(
        params: SamplingParams,
        logits: &[f32],
        expected: &[f64],
        n: usize,
    ) -> (f64, f64) {
        let mut s = Sampler::new(params).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        let mut chi = 0.0;
        let mut cells = 0;
        for (c, &p) in counts.iter().zip(expected) {
            if p == 0.0 {
                if *c > 0 {
                    chi = f64::INFINITY;
                }
                continue;
            }
            let e = p * n as f64;
            chi += (*c as f64 - e).powi(2) / e;
            cells += 1;
        }
        let df = (cells - 1) as f64;
        let z = 3.09;
        let crit = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
        (chi, crit)
    }

    /// On a vocabulary-sized row (8,192 tokens, a third forbidden by a grammar), the sampler
    /// keeps exactly the tokens the reference keeps, for cuts that need the selection widened
    /// (top-p mass spread over thousands of tokens) and cuts that do not; and never draws a
    /// forbidden token.
    #[test]
    fn cuts_on_a_whole_vocabulary_keep_the_reference_set() {
        let mut rng = StdRng::seed_from_u64(3);
        let logits: Vec<f32> = (0..8192)
            .map(|i| {
                if i % 3 == 0 {
                    f32::NEG_INFINITY
                } else {
                    rng.random::<f32>() * 4.0
                }
            })
            .collect();
        for &(t, k, p) in &[
            (1.0, 0, 0.5),
            (1.0, 0, 0.95),
            (0.3, 0, 0.9),
            (1.0, 300, 0.9),
            (1.0, 100, 1.0),
            (1.0, 0, 1.0),
            (2.0, 5000, 0.999),
        ] {
            let want: Vec<u32> = reference(&logits, t, k, p)
                .iter()
                .enumerate()
                .filter(|(_, &q)| q > 0.0)
                .map(|(i, _)| i as u32)
                .collect();
            let mut cand: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > f32::NEG_INFINITY)
                .map(|(i, &v)| (i as u32, v / t as f32))
                .collect();
            let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
            let k_eff = if k == 0 { cand.len() } else { k };
            let kept = most_probable(&mut cand, k_eff, max, p as f32);
            let mut got: Vec<u32> = cand[..kept].iter().map(|c| c.0).collect();
            got.sort_unstable();
            assert_eq!(got.len(), want.len(), "T={t} top_k={k} top_p={p}");
            assert_eq!(got, want, "T={t} top_k={k} top_p={p}");
            let mut s = Sampler::new(SamplingParams {
                temperature: t as f32,
                top_k: k,
                top_p: p as f32,
                seed: 9,
            })
            .unwrap();
            for _ in 0..50 {
                let tok = s.sample(&logits);
                assert!(
                    want.binary_search(&tok).is_ok(),
                    "T={t} top_k={k} top_p={p}: {tok}"
                );
            }
        }
    }

    /// Issue 36, 2.7: draws follow softmax(logits / T) at T = 0.5 and T = 2, and the top-k and
    /// top-p cuts, by a chi-square test of 40,000 seeded draws each (deterministic: the same
    /// seed always draws the same). `logits * T`, or a cut taken before the temperature, fails.
    #[test]
    fn draws_follow_the_tempered_softmax_and_its_cuts() {
        let logits = [1.5f32, 1.0, 0.7, 0.2, 0.0, -0.4, -1.0, -2.0];
        let cases = [
            (0.5, 0, 1.0),
            (2.0, 0, 1.0),
            (1.0, 3, 1.0),
            (2.0, 5, 1.0),
            (1.0, 0, 0.6),
            (2.0, 0, 0.8),
            (0.7, 4, 0.9),
        ];
        for (i, &(t, k, p)) in cases.iter().enumerate() {
            let params = SamplingParams {
                temperature: t as f32,
                top_k: k,
                top_p: p as f32,
                seed: 1000 + i as u64,
            };
            let expected = reference(&logits, t, k, p);
            let (chi, crit) = chi_square(params, &logits, &expected, 40_000);
            assert!(
                chi < crit,
                "T={t} top_k={k} top_p={p}: chi-square {chi:.1} over {crit:.1} ({expected:?})"
            );
            // The wrong rule is told apart: the distribution of logits * T at T != 1.
            if t != 1.0 {
                let wrong = reference(&logits, 1.0 / t, k, p);
                let (chi, crit) = chi_square(
                    SamplingParams {
                        temperature: t as f32,
                        top_k: k,
                        top_p: p as f32,
                        seed: 1000 + i as u64,
                    },
                    &logits,
                    &wrong,
                    40_000,
                );
                assert!(
                    chi > crit,
                    "T={t}: the wrong distribution passed ({chi:.1})"
                );
            }
        }
    }
}
