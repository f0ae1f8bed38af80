//! Routing traces: token sequences through the model, each token's routing in each layer handed
//! out step by step as columns (one row per chosen expert), for `bora routes` to write as
//! Parquet. Nothing is kept between steps, so memory stays flat on any length of input.
//!
//! A sequence longer than the context is cut into windows of `context` tokens, each run from
//! position 0 (as `perplexity` scores text, without the overlap); several windows run in one
//! step, as serving batches sequences.

use bora_model::{Batch, Logits, Model, RoutingStats, SeqInput};

use crate::{EngineError, Result};

/// How to trace.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// Tokens of a window at most (bounded by the model's context).
    pub context: usize,
    /// Windows run in one step.
    pub parallel: usize,
    /// Keep the router's full softmax too (`E` values per token and layer).
    pub probs: bool,
    /// Tokens run in one step, shared among the active windows. A prefill step is
    /// compute-bound, so a smaller one costs little time and bounds the step's working memory
    /// (the MoE block's activations grow with it).
    pub step_tokens: usize,
}

impl Default for RouteOptions {
    fn default() -> Self {
        Self {
            context: 2048,
            parallel: 2,
            probs: false,
            step_tokens: 256,
        }
    }
}

/// One step's routing, as columns of equal length: one row per (token, layer, rank).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepRoutes {
    /// The input sequence (its index among those given).
    pub sequence: Vec<u32>,
    /// The token's place in its input sequence (0 for its first token).
    pub position: Vec<u32>,
    /// The token.
    pub token_id: Vec<u32>,
    /// The layer.
    pub layer: Vec<u16>,
    /// 0 for the most probable expert, then 1, ...
    pub rank: Vec<u8>,
    /// The expert chosen.
    pub expert: Vec<u16>,
    /// Its weight, renormalized over the token's chosen experts (they sum to 1 in a layer).
    pub weight: Vec<f32>,
    /// With [`RouteOptions::probs`]: the router's softmax over all `experts`, `experts` values
    /// per row (the same for every rank of a token in a layer); empty otherwise.
    pub probs: Vec<f32>,
    /// Experts per layer (the length of each row of `probs`).
    pub experts: usize,
}

impl StepRoutes {
    /// Rows in the step.
    pub fn len(&self) -> usize {
        self.expert.len()
    }

    /// Whether the step has no rows.
    pub fn is_empty(&self) -> bool {
        self.expert.is_empty()
    }
}

/// A window being traced: its input sequence, where it starts in it, how far it has run.
struct Window {
    sequence: usize,
    offset: usize,
    len: usize,
    done: usize,
    slot: usize,
}

/// Runs `sequences` through `model` and gives `sink` each step's routing; returns the tokens
/// traced. `sink` may fail (a full disk): the trace stops with its error.
pub fn trace_routes(
    model: &Model,
    sequences: &[Vec<u32>],
    opts: &RouteOptions,
    sink: &mut dyn FnMut(StepRoutes) -> Result<()>,
) -> Result<u64> {
    let cfg = model.config();
    // No longer than the longest sequence: a JSONL of short requests keeps a small cache.
    let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let context = opts.context.min(cfg.context()).min(longest).max(1);
    let parallel = opts.parallel.max(1);
    let (layers, experts) = (cfg.num_hidden_layers, cfg.num_local_experts);
    let mut windows = sequences.iter().enumerate().flat_map(|(s, ids)| {
        (0..ids.len()).step_by(context).map(move |offset| Window {
            sequence: s,
            offset,
            len: (ids.len() - offset).min(context),
            done: 0,
            slot: 0,
        })
    });
    let mut cache = model.new_cache(parallel, context)?;
    let mut stats = RoutingStats::new(layers, experts).with_trace(opts.probs);
    let mut active: Vec<Window> = Vec::new();
    let mut free: Vec<usize> = (0..parallel).rev().collect();
    let mut traced = 0u64;
    loop {
        while let Some(slot) = free.pop() {
            match windows.next() {
                Some(w) => active.push(Window { slot, ..w }),
                None => {
                    free.push(slot);
                    break;
                }
            }
        }
        if active.is_empty() {
            break;
        }
        // Each step gives every active window an equal share of the step's tokens.
        let share = (opts.step_tokens / active.len()).max(16);
        let mut rows: Vec<(usize, usize, u32)> = Vec::new(); // (sequence, position, token)
        let seqs: Vec<SeqInput> = active
            .iter()
            .map(|w| {
                let n = (w.len - w.done).min(share);
                let from = w.offset + w.done;
                let tokens = sequences[w.sequence][from..from + n].to_vec();
                rows.extend(
                    tokens
                        .iter()
                        .enumerate()
                        .map(|(i, &t)| (w.sequence, from + i, t)),
                );
                SeqInput {
                    tokens,
                    start_pos: w.done,
                    blocks: cache.slot(w.slot),
                    logits: Logits::None,
                }
            })
            .collect();
        model.forward_observed(&Batch { seqs }, &mut cache, &mut stats)?;
        sink(step_routes(&rows, stats.take_trace(), experts)?)?;
        traced += rows.len() as u64;
        for w in active.iter_mut() {
            w.done += (w.len - w.done).min(share);
        }
        active.retain(|w| {
            let finished = w.done == w.len;
            if finished {
                free.push(w.slot);
            }
            !finished
        });
    }
    Ok(traced)
}

/// A step's layer-by-layer routing as rows, `rows` naming each token of the step.
pub(crate) fn step_routes(
    rows: &[(usize, usize, u32)],
    trace: Vec<bora_model::LayerRoutes>,
    experts: usize,
) -> Result<StepRoutes> {
    let mut out = StepRoutes {
        experts,
        ..StepRoutes::default()
    };
    for l in trace {
        let t = rows.len();
        if t == 0 || l.experts.len() % t != 0 {
            return Err(EngineError::Generation(format!(
                "layer {} routed {} choices for {t} tokens",
                l.layer,
                l.experts.len()
            )));
        }
        let a = l.experts.len() / t;
        for (i, &(sequence, position, token)) in rows.iter().enumerate() {
            for r in 0..a {
                out.sequence.push(sequence as u32);
                out.position.push(position as u32);
                out.token_id.push(token);
                out.layer.push(l.layer as u16);
                out.rank.push(r as u8);
                out.expert.push(l.experts[i * a + r] as u16);
                out.weight.push(l.weights[i * a + r]);
                if !l.probs.is_empty() {
                    out.probs
                        .extend_from_slice(&l.probs[i * experts..(i + 1) * experts]);
                }
            }
        }
    }
    Ok(out)
}
