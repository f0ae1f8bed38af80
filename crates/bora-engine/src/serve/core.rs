//! The engine thread: it alone owns the model's KV cache, the block allocator and every
//! sequence. Each step decodes one token of every running sequence together with prefill
//! chunks of new ones, within a token budget (continuous batching with chunked prefill).

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use bora_model::{Batch, KvCache, Logits, Model, RoutingStats, SeqInput};

use super::blocks::{chain_hash, BlockAllocator};
use super::predict::{StepCosts, MAX_DRAFT};
use super::request::{Event, FinishReason, Priority, Usage};
use super::sequence::Seq;
use super::{EngineConfig, EngineStats};
use crate::chat::ChatFormat;
use crate::tokenizer::Tokenizer;

/// A request admitted to the queue: its sequences (one per choice).
pub(crate) struct Submitted {
    pub id: u64,
    pub seqs: Vec<Seq>,
    pub prompt_tokens: usize,
}

pub(crate) enum Command {
    Add(Submitted),
}

struct ReqState {
    left: usize,
    usage: Usage,
}

pub(crate) struct Core {
    pub model: Model,
    pub cache: KvCache,
    pub alloc: BlockAllocator,
    pub tok: Arc<Tokenizer>,
    pub format: ChatFormat,
    pub eos: Vec<u32>,
    pub config: EngineConfig,
    pub stats: Arc<Mutex<EngineStats>>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    requests: HashMap<u64, ReqState>,
    /// Tokens routed to each expert of each layer since the start.
    routing: RoutingStats,
    /// What forward passes cost by their size (for choosing how many predicted tokens to
    /// verify).
    costs: StepCosts,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Model,
        cache: KvCache,
        tok: Arc<Tokenizer>,
        format: ChatFormat,
        eos: Vec<u32>,
        config: EngineConfig,
        stats: Arc<Mutex<EngineStats>>,
    ) -> Self {
        let mut alloc = BlockAllocator::new(cache.num_blocks(), cache.block_size());
        if config.kv_events.is_some() {
            alloc.record_events();
        }
        let cfg = model.config();
        let mut routing = RoutingStats::new(cfg.num_hidden_layers, cfg.num_local_experts);
        if config.route_trace.is_some() {
            routing = routing.with_trace(false);
        }
        Self {
            model,
            cache,
            alloc,
            tok,
            format,
            eos,
            config,
            stats,
            waiting: VecDeque::new(),
            running: Vec::new(),
            requests: HashMap::new(),
            routing,
            costs: StepCosts::new(),
        }
    }

    /// Runs until every handle to the engine is gone and no work is left.
    pub fn run(mut self, rx: Receiver<Command>) {
        loop {
            let idle = self.waiting.is_empty() && self.running.is_empty();
            let cmd = if idle {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            if let Some(Command::Add(s)) = cmd {
                self.add(s);
                // Take what arrived before planning the step, up to a queue's worth: callers
                // that submit and leave as fast as they can (their requests no longer counted)
                // must not keep the engine from ever stepping.
                for _ in 0..self.config.max_queue.max(1) {
                    match rx.try_recv() {
                        Ok(Command::Add(s)) => self.add(s),
                        Err(_) => break,
                    }
                }
            }
            self.step();
        }
    }

    fn add(&mut self, s: Submitted) {
        // A request whose caller has already gone is dropped here, never queued.
        if s.seqs.first().is_none_or(|q| q.events.is_closed()) {
            return;
        }
        self.requests.insert(
            s.id,
            ReqState {
                left: s.seqs.len(),
                usage: Usage {
                    prompt_tokens: s.prompt_tokens,
                    ..Usage::default()
                },
            },
        );
        for seq in s.seqs {
            // Interactive sequences queue ahead of batch ones.
            let at = match seq.priority {
                Priority::Interactive => self
                    .waiting
                    .iter()
                    .position(|w| w.priority == Priority::Batch)
                    .unwrap_or(self.waiting.len()),
                Priority::Batch => self.waiting.len(),
            };
            self.waiting.insert(at, seq);
        }
    }

    /// One scheduling step and forward pass.
    pub fn step(&mut self) {
        self.drop_cancelled();
        self.yield_batch();
        let mut budget = self.config.max_batch_tokens.max(1);
        // (index in running, tokens to compute)
        let mut plan: Vec<(usize, usize)> = Vec::new();
        // 1. One token for every sequence that is decoding, preempting the latest admitted
        //    sequences when a block is needed and none is left.
        //    A sequence with a predicted output verifies drafts of it in the same step, as many
        //    as pay off (and as fit in the budget and the free blocks, never preempting).
        let decoding = self.running.iter().filter(|s| s.pending() == 1).count();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].pending() == 1 {
                let need = self.running[i].computed + 1;
                if !self.grow(i, need) {
                    continue; // running[i] left (preempted or finished); the next one is at i
                }
                let k = self.drafts(i, decoding, budget - 1);
                plan.push((i, 1 + k));
                budget -= 1 + k;
            }
            i += 1;
        }
        // 2. Admit waiting sequences whose prompts fit in the free blocks.
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if !self.admit(&mut seq) {
                self.waiting.push_front(seq);
                break;
            }
            seq.slot.leave();
            self.running.push(seq);
        }
        // 3. Prefill chunks, shortest remaining prompt first, so that a short request is not
        //    held behind a long one.
        let mut prefill: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].pending() > 1)
            .collect();
        prefill.sort_by_key(|&i| (self.running[i].priority, self.running[i].pending()));
        // While other sequences wait on this step (decoding, or a prompt that finishes in it),
        // long prompts advance by small chunks, so that the step stays short.
        let chunk = self.config.max_prefill_chunk.max(1);
        // (Every entry of the plan so far decodes, with drafts or not.)
        let interactive =
            !plan.is_empty() || prefill.iter().any(|&i| self.running[i].pending() <= chunk);
        for i in prefill {
            if budget == 0 {
                break;
            }
            let pending = self.running[i].pending();
            let cap = if interactive && pending > chunk {
                self.config.interactive_chunk.max(1)
            } else {
                chunk
            };
            let n = pending.min(budget).min(cap);
            plan.push((i, n));
            budget -= n;
        }
        if plan.is_empty() {
            return;
        }
        self.forward(plan);
        self.publish_stats();
    }

    /// Gives running sequence `i` blocks for `upto` positions, preempting the latest admitted
    /// sequences (itself last) when none is left. False when sequence `i` left the running set:
    /// preempted back to the queue, or finished if it is alone and still does not fit.
    fn grow(&mut self, i: usize, upto: usize) -> bool {
        let bs = self.alloc.block_size();
        while self.running[i].blocks.len() * bs < upto {
            if let Some(b) = self.alloc.allocate() {
                self.running[i].blocks.push(b);
                continue;
            }
            if self.running.len() == 1 {
                let mut seq = self.running.remove(i);
                seq.finish(FinishReason::ModelLength, self.format, &self.tok);
                self.end(&mut seq);
                return false;
            }
            let victim_is_self = self.running.len() == i + 1;
            if let Some(mut victim) = self.running.pop() {
                // Recomputed when readmitted; its full blocks stay in the prefix cache.
                self.alloc.release(&victim.blocks);
                victim.blocks.clear();
                victim.hashes.clear();
                victim.computed = 0;
                self.waiting.push_front(victim);
            }
            if victim_is_self {
                return false;
            }
        }
        true
    }

    /// Sets running sequence `i`'s drafts for this step (its pending token computed, `base`
    /// tokens decoded in the step besides it, `budget` tokens left): how many its prediction's
    /// cost model picks, within the context, `max_tokens` and the free blocks. Their number.
    fn drafts(&mut self, i: usize, base: usize, budget: usize) -> usize {
        let bs = self.alloc.block_size();
        let free = self.alloc.available();
        let s = &mut self.running[i];
        let Some(p) = &s.prediction else {
            return 0;
        };
        let room = (s.context.saturating_sub(s.tokens.len()))
            .min(s.max_tokens.saturating_sub(s.generated().len() + 1))
            .min(s.blocks.len() * bs + free * bs - s.computed - 1)
            .min(budget)
            .min(MAX_DRAFT);
        let k = p.choose(base.saturating_sub(1), &self.costs, room, &self.tok);
        s.draft = p.draft(k, &self.tok);
        while s.blocks.len() * bs < s.computed + 1 + s.draft.len() {
            match self.alloc.allocate() {
                Some(b) => s.blocks.push(b),
                None => unreachable!("the free blocks were counted"),
            }
        }
        s.draft.len()
    }

    /// Makes room for the interactive sequence first in the queue, where the running set or
    /// the free blocks have none: the latest admitted batch sequences go back to the queue
    /// (behind the interactive ones; they are recomputed when readmitted).
    fn yield_batch(&mut self) {
        let Some(front) = self.waiting.front() else {
            return;
        };
        if front.priority != Priority::Interactive {
            return;
        }
        let need = front.tokens.len().div_ceil(self.alloc.block_size());
        while self.running.len() >= self.config.max_running || self.alloc.available() < need {
            let Some(i) = (0..self.running.len())
                .rev()
                .find(|&i| self.running[i].priority == Priority::Batch)
            else {
                return;
            };
            let mut victim = self.running.remove(i);
            self.alloc.release(&victim.blocks);
            victim.blocks.clear();
            victim.hashes.clear();
            victim.computed = 0;
            victim.draft.clear();
            self.waiting.push_back(victim);
        }
    }

    /// Takes the prefix cache's blocks for a sequence's leading tokens and allocates the rest
    /// of its tokens' blocks, or gives the sequence back when they do not fit.
    fn admit(&mut self, seq: &mut Seq) -> bool {
        let bs = self.alloc.block_size();
        // A prompt to score is computed whole: its positions' logits are wanted.
        let hits = if seq.scores_prompt() {
            Vec::new()
        } else {
            self.alloc.lookup_prefix(&seq.tokens)
        };
        let need = seq.tokens.len().div_ceil(bs) - hits.len();
        if need > self.alloc.available() {
            let blocks: Vec<u32> = hits.iter().map(|h| h.0).collect();
            self.alloc.release(&blocks);
            return false;
        }
        self.alloc
            .record(seq.tokens.len().saturating_sub(1) / bs, hits.len());
        seq.blocks = hits.iter().map(|h| h.0).collect();
        seq.hashes = hits.iter().map(|h| h.1).collect();
        seq.computed = seq.blocks.len() * bs;
        for _ in 0..need {
            match self.alloc.allocate() {
                Some(b) => seq.blocks.push(b),
                None => unreachable!("availability was checked"),
            }
        }
        true
    }

    fn forward(&mut self, plan: Vec<(usize, usize)>) {
        let modes: Vec<Logits> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                if s.scores_prompt() || !s.draft.is_empty() {
                    Logits::All
                } else if s.computed + n == s.tokens.len() {
                    Logits::Last
                } else {
                    Logits::None
                }
            })
            .collect();
        let seqs: Vec<SeqInput> = plan
            .iter()
            .zip(&modes)
            .map(|(&(i, n), &logits)| {
                let s = &self.running[i];
                let real = n - s.draft.len();
                let mut tokens = s.tokens[s.computed..s.computed + real].to_vec();
                tokens.extend_from_slice(&s.draft);
                SeqInput {
                    tokens,
                    start_pos: s.computed,
                    blocks: s.blocks.clone(),
                    logits,
                }
            })
            .collect();
        // (request, position, token) of each row, when the routing is traced.
        let trace_rows: Option<Vec<(usize, usize, u32)>> =
            self.config.route_trace.as_ref().map(|_| {
                plan.iter()
                    .zip(&seqs)
                    .flat_map(|(&(i, _), si)| {
                        let req = self.running[i].req as usize;
                        (si.tokens.iter().enumerate())
                            .map(move |(k, &t)| (req, si.start_pos + k, t))
                    })
                    .collect()
            });
        // Whether the step samples each sequence's next token (its last row).
        let wants: Vec<bool> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                s.computed + n - s.draft.len() == s.tokens.len()
            })
            .collect();
        // Grammar masks depend only on the tokens so far: they are computed on a thread of their
        // own while the forward pass runs.
        let to_prepare: Vec<usize> = plan
            .iter()
            .zip(&wants)
            .filter(|&(&(i, _), &want)| want && self.running[i].needs_prepare())
            .map(|(&(i, _), _)| i)
            .collect();
        // Drafts are verified with batch-invariant numerics: each of their rows is then what a
        // decode step of that token alone would compute, so that the tokens kept are the ones
        // plain decoding would choose (bit for bit where the products are invariant anyway:
        // packed quantized and AVX512-BF16 ones).
        let verifying = plan.iter().any(|&(i, _)| !self.running[i].draft.is_empty());
        self.model
            .set_batch_invariant(self.config.deterministic || verifying);
        let (model, cache, routing, running) = (
            &self.model,
            &mut self.cache,
            &mut self.routing,
            &mut self.running,
        );
        let result = std::thread::scope(|scope| {
            if !to_prepare.is_empty() {
                let mut seqs: Vec<&mut Seq> = running
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| to_prepare.contains(i))
                    .map(|(_, s)| s)
                    .collect();
                scope.spawn(move || seqs.iter_mut().for_each(|s| s.prepare()));
            }
            let pass = || {
                let started = std::time::Instant::now();
                let rows = model
                    .forward_observed(&Batch { seqs }, cache, routing)
                    .and_then(|l| Ok(l.to_vec2::<f32>()?));
                (rows, started.elapsed())
            };
            // The pool's workers poll through the pass (a decode step forks some 50 regions);
            // not while a grammar thread needs one of the cores.
            if to_prepare.is_empty() {
                bora_kernels::cpu::warm(pass)
            } else {
                pass()
            }
        });
        let (result, took) = result;
        // Counted once its pass is done and before its tokens are sent: a token's event never
        // comes before its step is counted, nor is a step counted before it has computed.
        if let Ok(mut st) = self.stats.lock() {
            st.steps += 1;
        }
        if let (Some(tx), Some(rows)) = (&self.config.route_trace, trace_rows) {
            let experts = self.model.config().num_local_experts;
            if let Ok(step) = crate::routes::step_routes(&rows, self.routing.take_trace(), experts)
            {
                // A reader that went away only stops the trace.
                let _ = tx.send(step);
            }
        }
        // Steps that only decode (and verify drafts) are the ones whose cost a choice of drafts
        // weighs: a prefill chunk computes one row of logits for many tokens.
        let decode_only = plan.iter().all(|&(i, n)| {
            let s = &self.running[i];
            n == 1 + s.draft.len() && s.computed + 1 == s.tokens.len()
        });
        if decode_only {
            self.costs.record(plan.iter().map(|p| p.1).sum(), took);
        }
        let mut rows = match result {
            Ok(rows) => rows.into_iter(),
            Err(e) => {
                let mut idx: Vec<usize> = plan.iter().map(|p| p.0).collect();
                idx.sort_unstable_by(|a, b| b.cmp(a));
                for i in idx {
                    let mut seq = self.running.remove(i);
                    let _ = seq.events.send(Event::Error {
                        message: format!("the forward pass failed: {e}"),
                    });
                    self.end(&mut seq);
                }
                return;
            }
        };
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        for ((&(i, n), want), mode) in plan.iter().zip(wants).zip(modes) {
            let s = &mut self.running[i];
            let start = s.computed;
            let mut mine: Vec<Vec<f32>> = match mode {
                Logits::None => Vec::new(),
                Logits::Last => rows.next().into_iter().collect(),
                Logits::All => rows.by_ref().take(n).collect(),
            };
            if !s.draft.is_empty() {
                if let Some(reason) = self.verify(i, mine) {
                    done.push((i, reason));
                }
                self.register_blocks(i);
                continue;
            }
            if mode == Logits::All {
                s.score_prompt(start, &mine, &self.tok);
            }
            s.computed += n;
            self.register_blocks(i);
            if !want {
                continue;
            }
            let s = &mut self.running[i];
            let Some(mut row) = mine.pop() else { continue };
            let t = s.choose(&mut row);
            if let Some(reason) = s.accept(t, &self.eos, self.format, &self.tok) {
                done.push((i, reason));
            }
        }
        // The step's stored blocks are published before any answer ends: a client's next turn
        // then finds its blocks known to a KV-aware router.
        if let Some(sink) = &self.config.kv_events {
            let events = self.alloc.take_events();
            if !events.is_empty() {
                sink.send(events);
                if let Ok(mut st) = self.stats.lock() {
                    st.kv_event_batches += 1;
                }
            }
        }
        done.sort_unstable_by_key(|d| std::cmp::Reverse(d.0));
        for (i, reason) in done {
            let mut seq = self.running.remove(i);
            seq.finish(reason, self.format, &self.tok);
            self.end(&mut seq);
        }
    }

    /// Samples running sequence `i`'s next tokens from the rows of its pending token and its
    /// drafts, as plain decoding would, keeping drafts while they equal the token sampled
    /// before them: their keys and values are then computed, and the next row is valid.
    /// Returns the finish reason if a token ends the choice.
    fn verify(&mut self, i: usize, rows: Vec<Vec<f32>>) -> Option<FinishReason> {
        let s = &mut self.running[i];
        let draft = std::mem::take(&mut s.draft);
        if rows.is_empty() {
            return None;
        }
        // The pending token's keys and values are in the cache now.
        s.computed += 1;
        if let Some(p) = &mut s.prediction {
            p.verifying(draft.len());
        }
        let mut kept = 0;
        let mut finish = None;
        for (j, mut row) in rows.into_iter().enumerate() {
            let t = s.choose(&mut row);
            finish = s.accept(t, &self.eos, self.format, &self.tok);
            if finish.is_some() || draft.get(j) != Some(&t) {
                break;
            }
            kept += 1;
            s.computed += 1;
        }
        if let Some(p) = &mut s.prediction {
            p.record(draft.len(), kept);
        }
        finish
    }

    /// Registers running sequence `i`'s newly computed full blocks for prefix reuse.
    fn register_blocks(&mut self, i: usize) {
        let s = &mut self.running[i];
        let bs = self.alloc.block_size();
        while s.hashes.len() < s.computed / bs {
            let k = s.hashes.len();
            let parent = s.hashes.last().copied();
            let tokens = &s.tokens[k * bs..(k + 1) * bs];
            let h = chain_hash(parent.unwrap_or(0), tokens);
            self.alloc.register(s.blocks[k], h, parent, tokens);
            s.hashes.push(h);
        }
    }

    /// Frees a finished sequence; after a request's last choice, sends `Done`.
    fn end(&mut self, seq: &mut Seq) {
        self.alloc.release(&seq.blocks);
        seq.blocks.clear();
        let Some(r) = self.requests.get_mut(&seq.req) else {
            return;
        };
        r.usage.completion_tokens += seq.generated().len();
        if let Some(p) = &seq.prediction {
            r.usage.accepted_prediction_tokens += p.accepted;
            r.usage.rejected_prediction_tokens += p.rejected;
        }
        r.left -= 1;
        if r.left == 0 {
            let usage = r.usage;
            self.requests.remove(&seq.req);
            let _ = seq.events.send(Event::Done { usage });
        }
    }

    /// Sequences whose receiver is gone (the client left) free their blocks now.
    fn drop_cancelled(&mut self) {
        let gone = |s: &Seq| s.events.is_closed();
        let mut freed = Vec::new();
        self.running.retain(|s| {
            let keep = !gone(s);
            if !keep {
                freed.extend_from_slice(&s.blocks);
            }
            keep
        });
        let before = self.waiting.len();
        // A dropped sequence's queue slot has already left the count (its caller's stream was
        // dropped, which gives the slot up); `leave` makes sure of it, once.
        self.waiting.retain(|s| {
            let keep = !gone(s);
            if !keep {
                s.slot.leave();
            }
            keep
        });
        let dropped_waiting = before - self.waiting.len();
        if !freed.is_empty() {
            self.alloc.release(&freed);
        }
        if dropped_waiting > 0 || !freed.is_empty() {
            let live: std::collections::HashSet<u64> = self
                .running
                .iter()
                .chain(self.waiting.iter())
                .map(|s| s.req)
                .collect();
            let dead: Vec<u64> = self
                .requests
                .keys()
                .filter(|r| !live.contains(r))
                .copied()
                .collect();
            for r in dead {
                self.requests.remove(&r);
            }
            self.publish_stats();
        }
    }

    fn publish_stats(&self) {
        if let Ok(mut st) = self.stats.lock() {
            st.running = self.running.len();
            st.waiting = self.waiting.len();
            st.blocks_used = self.alloc.used();
            st.blocks_free = self.alloc.available();
            st.prefix_lookups = self.alloc.lookups;
            st.prefix_hits = self.alloc.hits;
            st.expert_tokens.clone_from(&self.routing.counts);
            st.expert_cache = self.model.expert_cache_stats();
            st.step_seconds = self.costs.measured();
        }
    }
}
