//! Device copies of experts that the placement left in host memory (`--expert-cache`): as
//! requests run, the experts of host-placed layers are counted by the routing, and between
//! steps the ones worth it are copied to the device, up to a budget of bytes; the rest stay on
//! the CPU. Two policies: `Hot` (counts that decay, so that the copies follow the workload, a
//! copy replaced only by an expert clearly hotter) and `Lru` (an expert used in a step and not
//! on the device is brought in, replacing the one used longest ago). A step moves at most
//! [`ExpertCache::max_moves`] experts, so that no step stalls on copies.
//!
//! The hit rate is the share of the host-placed layers' routed tokens computed on the device.

use std::sync::{Arc, Mutex};

use bora_weights::{device_matrix, Experts, LoadOptions, Matrix, MixtralWeights};

use crate::Result;

/// How the cache chooses its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// The experts most routed to lately (counts decaying by [`HOT_DECAY`] a step).
    Hot,
    /// Least recently used out, the expert a step missed in.
    Lru,
}

impl CachePolicy {
    /// `--expert-cache`'s value: `auto` (or `hot`), `lru`, or `off` (`None`).
    pub fn parse(s: &str) -> std::result::Result<Option<Self>, String> {
        match s {
            "off" => Ok(None),
            "auto" | "hot" => Ok(Some(CachePolicy::Hot)),
            "lru" => Ok(Some(CachePolicy::Lru)),
            other => Err(format!("{other}: expected auto, lru or off")),
        }
    }
}

/// Per step, a hot score keeps this share of itself: a half-life of about 14 steps.
pub const HOT_DECAY: f64 = 0.95;

/// A hot expert replaces a copy only when its score is this many times the copy's.
const HOT_MARGIN: f64 = 1.25;

/// One expert's three matrices on the device.
#[derive(Debug)]
pub struct DeviceExpert {
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

/// The device copies of one layer's experts, by expert index (`None`: host only).
pub type Resident = Vec<Option<Arc<DeviceExpert>>>;

/// Where one layer's routed tokens went in a step.
#[derive(Debug, Clone, Default)]
pub struct LayerUsage {
    /// Tokens routed to each expert.
    pub counts: Vec<u64>,
    /// Of them, those computed on the device.
    pub on_device: u64,
}

impl LayerUsage {
    pub(crate) fn record(&mut self, chosen: &[u32], on_device: &dyn Fn(u32) -> bool) {
        for &c in chosen {
            let c = c as usize;
            if self.counts.len() <= c {
                self.counts.resize(c + 1, 0);
            }
            self.counts[c] += 1;
            self.on_device += u64::from(on_device(c as u32));
        }
    }
}

/// What the cache has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Routed tokens of host-placed layers computed on the device.
    pub hits: u64,
    /// Routed tokens of host-placed layers.
    pub lookups: u64,
    /// Experts copied to the device.
    pub moves: u64,
    /// Experts on the device now, and how many fit.
    pub resident: usize,
    pub capacity: usize,
}

impl CacheStats {
    /// `hits / lookups`, 0 before any.
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }
}

/// Device copies of host-placed experts, shared by clones of a model.
#[derive(Debug)]
pub struct ExpertCache {
    policy: CachePolicy,
    max_moves: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Experts that fit (lowered when a copy fails).
    capacity: usize,
    /// `[layer]`: empty for layers whose experts are on the device by placement.
    resident: Vec<Resident>,
    /// `[layer][expert]`: the hot score, or the step last used.
    score: Vec<Vec<f64>>,
    step: u64,
    stats: CacheStats,
}

impl ExpertCache {
    /// A cache of `budget_bytes` on the weights' device for their host-placed layers' experts;
    /// `None` where no layer's experts are on the host or not one expert fits.
    pub fn new(weights: &MixtralWeights, policy: CachePolicy, budget_bytes: u64) -> Option<Self> {
        let host_layer = |l: &bora_weights::LayerWeights| l.experts_on_host();
        let per_expert = weights
            .layers
            .iter()
            .find(|l| host_layer(l))
            .map(|l| l.experts.expert_bytes() as u64)?;
        let capacity = (budget_bytes / per_expert.max(1)) as usize;
        let host: Vec<bool> = weights.layers.iter().map(host_layer).collect();
        Self::with_shape(policy, capacity, &host, weights.config.num_local_experts)
    }

    /// A cache of `capacity` experts for the layers `host` marks, of `e` experts each; `None`
    /// where not one fits.
    fn with_shape(policy: CachePolicy, capacity: usize, host: &[bool], e: usize) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let resident = host
            .iter()
            .map(|&h| if h { vec![None; e] } else { Vec::new() })
            .collect();
        let score = vec![vec![0.0; e]; host.len()];
        Some(Self {
            policy,
            max_moves: 2,
            state: Mutex::new(State {
                capacity,
                resident,
                score,
                step: 0,
                stats: CacheStats {
                    capacity,
                    ..CacheStats::default()
                },
            }),
        })
    }

    /// The policy.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// Experts copied to the device in one step at most.
    pub fn max_moves(&self) -> usize {
        self.max_moves
    }

    /// Sets [`ExpertCache::max_moves`] (at least 1).
    pub fn set_max_moves(&mut self, n: usize) {
        self.max_moves = n.max(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere leaves the state consistent (every update is a whole assignment).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device copies of every layer's experts for the next step.
    pub(crate) fn snapshot(&self) -> Vec<Resident> {
        self.lock().resident.clone()
    }

    /// The experts with a device copy now, by layer (empty for layers placed on the device).
    pub fn resident_experts(&self) -> Vec<Vec<usize>> {
        self.lock()
            .resident
            .iter()
            .map(|r| (0..r.len()).filter(|&e| r[e].is_some()).collect())
            .collect()
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// After a step: counts the step's `usage` (`[layer]`, empty for placed layers) and moves
    /// experts between the host and the device as the policy says.
    pub(crate) fn end_step(&self, weights: &MixtralWeights, usage: &[LayerUsage]) -> Result<()> {
        self.end_step_with(usage, |l, e| upload(weights, l, e))
    }

    /// [`ExpertCache::end_step`], copying layer `l`'s expert `e` with `upload`.
    fn end_step_with(
        &self,
        usage: &[LayerUsage],
        mut upload: impl FnMut(usize, usize) -> Result<DeviceExpert>,
    ) -> Result<()> {
        let mut st = self.lock();
        st.step += 1;
        let step = st.step as f64;
        let mut used: Vec<(f64, usize, usize)> = Vec::new(); // (count, layer, expert)
        for (l, u) in usage.iter().enumerate() {
            if st.resident.get(l).is_none_or(|r| r.is_empty()) {
                continue;
            }
            st.stats.lookups += u.counts.iter().sum::<u64>();
            st.stats.hits += u.on_device;
            for (e, &n) in u.counts.iter().enumerate() {
                if n > 0 {
                    used.push((n as f64, l, e));
                }
            }
        }
        match self.policy {
            CachePolicy::Hot => {
                for (l, row) in st.score.iter_mut().enumerate() {
                    let counts = usage.get(l).map(|u| u.counts.as_slice()).unwrap_or(&[]);
                    for (e, s) in row.iter_mut().enumerate() {
                        *s = *s * HOT_DECAY + counts.get(e).copied().unwrap_or(0) as f64;
                    }
                }
            }
            CachePolicy::Lru => {
                for &(_, l, e) in &used {
                    st.score[l][e] = step;
                }
            }
        }
        let moves = self.choose_moves(&st, &used, step);
        for (l, e, evict) in moves {
            if let Some((vl, ve)) = evict {
                st.resident[vl][ve] = None;
            }
            match upload(l, e) {
                Ok(d) => {
                    st.resident[l][e] = Some(Arc::new(d));
                    st.stats.moves += 1;
                }
                // The device is fuller than the plan said (another process, the KV cache):
                // keep what is there and copy no more, rather than fail the step.
                Err(_) => {
                    st.capacity = st.resident.iter().flatten().filter(|r| r.is_some()).count();
                    st.stats.capacity = st.capacity;
                    break;
                }
            }
        }
        st.stats.resident = st.resident.iter().flatten().filter(|r| r.is_some()).count();
        Ok(())
    }

    /// The copies to make, each with the copy it replaces.
    #[allow(clippy::type_complexity)]
    fn choose_moves(
        &self,
        st: &State,
        used: &[(f64, usize, usize)],
        step: f64,
    ) -> Vec<(usize, usize, Option<(usize, usize)>)> {
        let mut resident: Vec<(f64, usize, usize)> = Vec::new();
        let mut hot: Vec<(f64, usize, usize)> = Vec::new();
        for (l, row) in st.resident.iter().enumerate() {
            for (e, r) in row.iter().enumerate() {
                let s = st.score[l][e];
                if r.is_some() {
                    resident.push((s, l, e));
                } else if s > 0.0 {
                    hot.push((s, l, e));
                }
            }
        }
        let mut candidates = match self.policy {
            CachePolicy::Hot => hot,
            // Missed in this step: the most used first.
            CachePolicy::Lru => used
                .iter()
                .filter(|&&(_, l, e)| st.resident[l].get(e).is_some_and(|r| r.is_none()))
                .copied()
                .collect(),
        };
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        // Victims: the coldest (or least recent) first.
        resident.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut free = st.capacity.saturating_sub(resident.len());
        let mut victims = resident.into_iter();
        let mut moves = Vec::new();
        for (s, l, e) in candidates {
            if moves.len() >= self.max_moves {
                break;
            }
            if free > 0 {
                free -= 1;
                moves.push((l, e, None));
                continue;
            }
            let Some((vs, vl, ve)) = victims.next() else {
                break;
            };
            let worth = match self.policy {
                CachePolicy::Hot => s > vs * HOT_MARGIN,
                // Never evict what this step used.
                CachePolicy::Lru => vs < step,
            };
            if !worth {
                break;
            }
            moves.push((l, e, Some((vl, ve))));
        }
        moves
    }
}

/// Layer `l`'s expert `e` copied from host memory to the weights' device.
fn upload(weights: &MixtralWeights, l: usize, e: usize) -> Result<DeviceExpert> {
    let Experts::Host { gate, up, down } = &weights.layers[l].experts else {
        return Err(crate::ModelError::Batch(format!(
            "layer {l}'s experts are not in host memory"
        )));
    };
    let opts: &LoadOptions = &weights.options;
    Ok(DeviceExpert {
        gate: device_matrix(&gate[e], opts)?,
        up: device_matrix(&up[e], opts)?,
        down: device_matrix(&down[e], opts)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in device copy (the policy never looks inside one).
    fn copy() -> Result<DeviceExpert> {
        let m = || {
            Matrix::Tensor(
                candle_core::Tensor::zeros(
                    (1, 1),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .expect("a 1x1 tensor"),
            )
        };
        Ok(DeviceExpert {
            gate: m(),
            up: m(),
            down: m(),
        })
    }

    /// One step: `counts` tokens routed to each expert of the one host-placed layer (layer 1;
    /// layer 0 is placed on the device), the resident set after it.
    fn step(cache: &ExpertCache, counts: &[u64]) -> Vec<usize> {
        let resident = cache.snapshot();
        let on_device = counts
            .iter()
            .enumerate()
            .filter(|&(e, _)| resident[1][e].is_some())
            .map(|(_, n)| n)
            .sum();
        let usage = [
            LayerUsage::default(),
            LayerUsage {
                counts: counts.to_vec(),
                on_device,
            },
        ];
        cache.end_step_with(&usage, |_, _| copy()).unwrap();
        let after = cache.snapshot();
        assert!(after[0].is_empty(), "a placed layer has no copies");
        (0..counts.len())
            .filter(|&e| after[1][e].is_some())
            .collect()
    }

    fn cache(policy: CachePolicy, capacity: usize) -> ExpertCache {
        ExpertCache::with_shape(policy, capacity, &[false, true], 5).unwrap()
    }

    /// Issue 36, 2.3: `auto` (hot): scores decay by 0.95 a step, a copy is replaced only by an
    /// expert 1.25 times hotter, and at most two copies are made a step.
    #[test]
    fn hot_scores_decay_and_replace_only_past_the_margin() {
        let c = cache(CachePolicy::Hot, 2);
        // Three experts hot at once, room for two: the two hottest, two copies.
        assert_eq!(step(&c, &[10, 8, 6, 0, 0]), [0, 1]);
        assert_eq!(c.stats().moves, 2);
        // Expert 2 (6, then 5.7) against the coldest copy (expert 1: 8, then 7.6): not 1.25
        // times hotter, nothing moves, even as expert 1 cools for a while.
        assert_eq!(step(&c, &[0, 0, 0, 0, 0]), [0, 1]);
        // Expert 2 used again: 5.7 * 0.95 + 2 = 7.415, hotter than expert 1 (7.22) but not
        // 1.25 times (9.025): it stays out.
        assert_eq!(step(&c, &[0, 0, 2, 0, 0]), [0, 1]);
        // And again: 7.415 * 0.95 + 3 = 10.04 against 6.859 * 1.25 = 8.57: it replaces 1.
        assert_eq!(step(&c, &[0, 0, 3, 0, 0]), [0, 2]);
        assert_eq!(c.stats().moves, 3);
        // Expert 3 at 11 replaces the colder copy, expert 0 (10 * 0.95^4 = 8.145; 11 > 10.18);
        // expert 1 (6.516) does not replace expert 2 (9.54).
        assert_eq!(step(&c, &[0, 0, 0, 11, 0]), [2, 3]);
        // Four new hot experts on an emptier cache: two copies a step at most.
        let c = cache(CachePolicy::Hot, 4);
        assert_eq!(step(&c, &[5, 5, 5, 5, 0]).len(), 2);
        assert_eq!(step(&c, &[0, 0, 0, 0, 0]).len(), 4);
        // Hits: the tokens of experts that were on the device when the step ran.
        let s = c.stats();
        assert_eq!((s.lookups, s.hits, s.resident, s.capacity), (20, 0, 4, 4));
        step(&c, &[1, 1, 1, 1, 1]);
        assert_eq!(c.stats().hits, 4);
    }

    /// Issue 36, 2.3: `lru`: an expert used and missed comes in, replacing the one used longest
    /// ago, never one this step used; two copies a step at most.
    #[test]
    fn lru_brings_in_what_was_missed_and_evicts_the_least_recent() {
        let c = cache(CachePolicy::Lru, 2);
        assert_eq!(step(&c, &[1, 1, 0, 0, 0]), [0, 1]);
        // Expert 2 missed: both copies last used at step 1; the first of them goes.
        assert_eq!(step(&c, &[0, 0, 3, 0, 0]), [1, 2]);
        // Experts 1 and 3 used: 3 was missed and replaces 2 (used at step 2, before 1's step 3).
        assert_eq!(step(&c, &[0, 2, 0, 1, 0]), [1, 3]);
        // Everything in this step was used in it: experts 0 and 4 missed, but no copy may go.
        assert_eq!(step(&c, &[1, 1, 0, 1, 1]), [1, 3]);
        // Three missed at once, room for them: two copies a step.
        let c = cache(CachePolicy::Lru, 4);
        assert_eq!(step(&c, &[1, 1, 1, 0, 0]).len(), 2);
    }
}
