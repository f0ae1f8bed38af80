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
        if capacity == 0 {
            return None;
        }
        let e = weights.config.num_local_experts;
        let resident = weights
            .layers
            .iter()
            .map(|l| {
                if host_layer(l) {
                    vec![None; e]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let score = vec![vec![0.0; e]; weights.layers.len()];
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

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// After a step: counts the step's `usage` (`[layer]`, empty for placed layers) and moves
    /// experts between the host and the device as the policy says.
    pub(crate) fn end_step(&self, weights: &MixtralWeights, usage: &[LayerUsage]) -> Result<()> {
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
            match upload(weights, l, e) {
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
