//! The serving engine: many conversations at once on one model, with continuous batching over a
//! paged KV cache, prefix caching, preemption and admission control. A library first: the server
//! and the CLI are thin layers over [`Engine`], and it never opens a socket.
//!
//! One thread (the engine thread, `core`) owns the model's mutable state; requests reach it over
//! a channel and carry their own reply channel of [`Event`]s. Chat rendering and tokenization
//! happen on the caller's thread, in [`Engine::chat`].

mod blocks;
pub use blocks::KvEvent;
mod core;
mod logits;
mod predict;
mod queue;
mod request;
mod sequence;
mod stop;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use bora_model::Model;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub use logits::{
    ForbidTokens, LogitsProcessor, MinTokens, Penalties, ProcessorFactory, RepetitionPenalty,
};
pub use request::{Choice, Completion, CompletionResult, Event, FinishReason, Priority, Usage};

use self::core::{Command, Core, Submitted};
use self::queue::{QueueCount, QueueSlot};
use self::sequence::{Seq, SeqInit};
use crate::chat::{render, ChatFormat};
use crate::constrain::ToolChoice;
use crate::load::{ModelOptions, ModelSource};
use crate::logprobs::MAX_TOP_LOGPROBS;
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::{EngineError, Result};

/// How much memory the KV cache takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvBudget {
    /// This many blocks.
    Blocks(usize),
    /// This many MiB.
    Mib(usize),
    /// This share (0 to 1) of the memory available on the model's device when the engine
    /// starts: the GPU's free memory, or the host's.
    ShareOfFree(f64),
}

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Positions per KV block.
    pub block_size: usize,
    /// Memory for the KV cache.
    pub kv_budget: KvBudget,
    /// Tokens computed per step at most (decode tokens and prefill chunks together).
    pub max_batch_tokens: usize,
    /// Prompt tokens one sequence computes per step at most (chunked prefill).
    pub max_prefill_chunk: usize,
    /// The chunk of a long prompt in steps that other sequences wait on (decoding, or a short
    /// prompt about to answer): smaller, so those steps stay short.
    pub interactive_chunk: usize,
    /// Sequences running at once at most.
    pub max_running: usize,
    /// Requests waiting for admission at most; beyond it `chat` fails with `Overloaded`.
    pub max_queue: usize,
    /// The chat format (default: the tokenizer's).
    pub chat_format: Option<ChatFormat>,
    /// Batch-invariant numerics ([`Model::set_batch_invariant`]): a seeded request gives the
    /// same answer alone and under load. Slower prefill.
    pub deterministic: bool,
    /// Each step's routing, token by token, sent here as it is computed (`sequence`: the
    /// request's id; `position`: the token's place in its sequence). For `bora bench
    /// --report`; every step pays a copy of its routing.
    pub route_trace: Option<std::sync::mpsc::Sender<crate::StepRoutes>>,
    /// The prefix cache's changes (blocks stored, evicted), sent after each step that made
    /// some, before the answers the step ends: what `bora serve --kv-events` publishes for
    /// KV-aware routers.
    pub kv_events: Option<KvEventSink>,
}

/// Where the engine sends each step's KV events: called on the engine thread, after the step's
/// forward pass and before any answer it ends is sent (a channel's sender converts into one).
#[derive(Clone)]
pub struct KvEventSink(Arc<dyn Fn(Vec<KvEvent>) + Send + Sync>);

impl KvEventSink {
    /// A sink that calls `f` with each step's events.
    pub fn new(f: impl Fn(Vec<KvEvent>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn send(&self, events: Vec<KvEvent>) {
        (self.0)(events)
    }
}

impl From<std::sync::mpsc::Sender<Vec<KvEvent>>> for KvEventSink {
    /// Each step's events sent on the channel (a receiver that went away only stops them).
    fn from(tx: std::sync::mpsc::Sender<Vec<KvEvent>>) -> Self {
        Self::new(move |events| {
            let _ = tx.send(events);
        })
    }
}

impl std::fmt::Debug for KvEventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvEventSink")
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: bora_model::DEFAULT_BLOCK_SIZE,
            kv_budget: KvBudget::ShareOfFree(0.25),
            max_batch_tokens: 512,
            max_prefill_chunk: 256,
            interactive_chunk: 32,
            max_running: 64,
            max_queue: 256,
            chat_format: None,
            deterministic: false,
            route_trace: None,
            kv_events: None,
        }
    }
}

/// What the engine is doing, as of its last step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences running.
    pub running: usize,
    /// Sequences waiting for admission (new or preempted).
    pub waiting: usize,
    /// Requests waiting for admission whose caller still waits for them: what `max_queue`
    /// bounds ([`Engine::queued`], read when the snapshot is taken).
    pub queued: usize,
    /// KV blocks held by sequences.
    pub blocks_used: usize,
    /// KV blocks free or idle in the prefix cache.
    pub blocks_free: usize,
    /// KV blocks in the pool.
    pub blocks_total: usize,
    /// Full prompt blocks of admitted sequences, and those found in the prefix cache.
    pub prefix_lookups: u64,
    /// Prompt blocks found in the prefix cache.
    pub prefix_hits: u64,
    /// Steps run so far (a step is counted once its forward pass is done, before its tokens
    /// are sent).
    pub steps: u64,
    /// Lists of KV-cache events given to [`EngineConfig::kv_events`] so far, one a step that
    /// made some (`bora serve --kv-events` publishes each as a batch numbered from 0: the last
    /// batch's seq is this minus 1).
    pub kv_event_batches: u64,
    /// Tokens routed to each expert (`[layer][expert]`) since the start.
    pub expert_tokens: Vec<Vec<u64>>,
    /// What the expert cache has done (`--expert-cache`), where there is one.
    pub expert_cache: Option<bora_model::CacheStats>,
    /// Measured seconds of a step that only decodes (and verifies predicted tokens), by the
    /// tokens it computes: `(tokens, seconds)`, moving averages (what predicted outputs weigh).
    pub step_seconds: Vec<(usize, f64)>,
}

impl EngineStats {
    /// Share of looked-up prompt blocks found in the prefix cache.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_lookups == 0 {
            0.0
        } else {
            self.prefix_hits as f64 / self.prefix_lookups as f64
        }
    }
}

/// A handle to a running engine; cheap to clone, shareable across threads.
#[derive(Clone)]
pub struct Engine {
    tx: Sender<Command>,
    tok: Arc<Tokenizer>,
    /// End-of-sequence tokens (the model's and the tokenizer's).
    eos: Arc<Vec<u32>>,
    grammars: Arc<crate::constrain::Grammars>,
    model_config: Arc<bora_core::ModelConfig>,
    format: ChatFormat,
    context: usize,
    block_size: usize,
    blocks: usize,
    max_queue: usize,
    queued: QueueCount,
    next_id: Arc<AtomicU64>,
    stats: Arc<Mutex<EngineStats>>,
}

/// The events of one request, as they come.
pub struct CompletionStream {
    rx: UnboundedReceiver<Event>,
    /// The request's place in the queue count, given up when the stream is dropped: a caller
    /// that stops listening takes its request off the count at once.
    slot: Option<Arc<QueueSlot>>,
}

impl Drop for CompletionStream {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.leave();
        }
    }
}

impl Engine {
    /// Loads a model ([`crate::load_model`]) and starts an engine on it.
    pub fn load(source: &ModelSource, opts: &ModelOptions, config: EngineConfig) -> Result<Self> {
        Self::load_with_progress(source, opts, config, &mut |_| {})
    }

    /// [`Engine::load`], reporting the load's progress to `progress`.
    pub fn load_with_progress(
        source: &ModelSource,
        opts: &ModelOptions,
        config: EngineConfig,
        progress: &mut dyn FnMut(crate::LoadProgress),
    ) -> Result<Self> {
        let loaded = crate::load_model(source, opts, progress)?;
        Self::new(loaded.model, loaded.tokenizer, config)
    }

    /// Starts an engine on a loaded model and tokenizer.
    pub fn new(mut model: Model, tok: Tokenizer, config: EngineConfig) -> Result<Self> {
        if config.deterministic {
            model.set_batch_invariant(true);
        }
        let cfg = model.config().clone();
        let block_bytes =
            bora_model::KvCache::block_bytes(&cfg, config.block_size.max(1), model.kv_dtype());
        let blocks = match config.kv_budget {
            KvBudget::Blocks(n) => n,
            KvBudget::Mib(m) => m.saturating_mul(1 << 20) / block_bytes,
            KvBudget::ShareOfFree(f) => {
                (available_memory(model.device()) as f64 * f.clamp(0.0, 1.0)) as usize / block_bytes
            }
        };
        // Enough for one full-context sequence needs no more than the model's context.
        let blocks = blocks.min(
            cfg.context()
                .div_ceil(config.block_size.max(1))
                .saturating_mul(config.max_running.max(1)),
        );
        if blocks < 2 {
            return Err(EngineError::Config(format!(
                "the KV cache budget {:?} holds {blocks} blocks of {block_bytes} bytes; at least 2 are needed",
                config.kv_budget
            )));
        }
        let cache = model.new_block_cache(blocks, config.block_size.max(1))?;
        let format = config
            .chat_format
            .unwrap_or_else(|| ChatFormat::detect(&tok));
        let mut eos = cfg.eos_token_ids.clone();
        eos.extend(tok.specials().eos.filter(|e| !eos.contains(e)));
        let grammars = Arc::new(crate::constrain::Grammars::new(
            &tok,
            eos.first().copied().unwrap_or(2),
            format,
        )?);
        let tok = Arc::new(tok);
        let queued = QueueCount::default();
        let stats = Arc::new(Mutex::new(EngineStats {
            blocks_total: blocks,
            blocks_free: blocks,
            // Zeros until the first step: every (layer, expert) is there from the start.
            expert_tokens: vec![
                vec![0; model.config().num_local_experts];
                model.config().num_hidden_layers
            ],
            ..Default::default()
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        let eos_ids = Arc::new(eos.clone());
        let core = Core::new(
            model,
            cache,
            tok.clone(),
            format,
            eos,
            config.clone(),
            stats.clone(),
        );
        // The engine loop runs on a worker of its own rayon pool, so that the kernels' parallel
        // regions fork and join on that thread: called from outside a pool, each region would
        // also put the caller to sleep and wake it again (some 40 regions per decode step).
        // The pool has rayon's default size (RAYON_NUM_THREADS, or one thread per core), the
        // engine's worker included.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("bora-engine-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("cannot start the engine threads: {e}")))?;
        std::thread::Builder::new()
            .name("bora-engine".into())
            .spawn(move || pool.install(move || core.run(rx)))
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            tx,
            tok,
            eos: eos_ids,
            grammars,
            model_config: Arc::new(cfg.clone()),
            format,
            context: cfg.context().min(blocks * config.block_size.max(1)),
            block_size: config.block_size.max(1),
            blocks,
            max_queue: config.max_queue,
            queued,
            next_id: Arc::new(AtomicU64::new(1)),
            stats,
        })
    }

    /// The engine's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// The configuration of the model being served.
    pub fn model_config(&self) -> &bora_core::ModelConfig {
        &self.model_config
    }

    /// The chat format prompts are rendered in.
    pub fn chat_format(&self) -> ChatFormat {
        self.format
    }

    /// Positions a prompt and its answer may fill together.
    pub fn context(&self) -> usize {
        self.context
    }

    /// A snapshot of what the engine is doing.
    pub fn stats(&self) -> EngineStats {
        let mut st = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        st.queued = self.queued();
        st
    }

    /// Requests counted against `max_queue` now: submitted, not yet admitted, and still
    /// awaited by their caller.
    pub fn queued(&self) -> usize {
        self.queued.get()
    }

    /// Renders and submits a chat request; its events arrive on the returned stream.
    pub fn chat(&self, req: &Completion) -> Result<CompletionStream> {
        let prompt = render(self.format, &self.tok, &req.chat)?;
        self.submit(prompt, req)
    }

    /// The prompt a chat request runs, rendered and checked as [`Engine::chat`] checks it (its
    /// settings, the context, its schema compiled), nothing run: what a router asks for.
    pub fn prompt(&self, req: &Completion) -> Result<Vec<u32>> {
        let prompt = render(self.format, &self.tok, &req.chat)?;
        self.check(&prompt, req)?;
        self.grammar(&prompt, req)?;
        Ok(prompt)
    }

    /// The request's grammar, compiled (`None` without a constraint).
    fn grammar(&self, prompt: &[u32], req: &Completion) -> Result<Option<ProcessorFactory>> {
        req.constraint()
            .map(|c| {
                self.grammars
                    .processor(&c, req.max_tokens.unwrap_or(self.context - prompt.len()))
            })
            .transpose()
    }

    /// Submits an already tokenized prompt (BOS included where the model wants it).
    pub fn submit(&self, prompt: Vec<u32>, req: &Completion) -> Result<CompletionStream> {
        self.check(&prompt, req)?;
        let room = self.context;
        // Admission control: a full queue refuses at once. The slot leaves the count when it
        // is dropped, so every early return below gives it back.
        let Some(slot) = self.queued.enter(self.max_queue) else {
            return Err(EngineError::Overloaded {
                queued: self.max_queue,
            });
        };
        let grammar = self.grammar(&prompt, req)?;
        // tool_choice none: the call token (where the tokenizer has one) is never sampled.
        let forbid = (req.tool_choice == ToolChoice::None)
            .then(|| self.tok.specials().tool_calls)
            .flatten()
            .map(|id| vec![id]);
        let prediction = req.prediction.clone().filter(|p| !p.is_empty());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seed = req.seed.unwrap_or_else(rand::random);
        let (etx, erx) = unbounded_channel();
        let mut seqs = Vec::with_capacity(req.n);
        for choice in 0..req.n {
            let sampler = Sampler::new(SamplingParams {
                seed: choice_seed(seed, choice),
                ..req.sampling.clone()
            })?;
            seqs.push(Seq::new(SeqInit {
                req: id,
                choice,
                slot: slot.clone(),
                events: etx.clone(),
                prompt: prompt.clone(),
                max_tokens: req.max_tokens.unwrap_or(room - prompt.len()),
                context: room,
                sampler,
                processors: processors(
                    req,
                    &prompt,
                    &self.eos,
                    grammar.as_ref(),
                    forbid.as_deref(),
                ),
                stop: req.stop.clone(),
                calls: match (&req.tool_choice, req.parallel_tool_calls) {
                    (ToolChoice::None, _) => Some(0),
                    (_, false) => Some(1),
                    (_, true) => None,
                },
                logprobs: req.logprobs,
                prompt_logprobs: req.prompt_logprobs,
                prediction: prediction.clone(),
                priority: req.priority,
            }));
        }
        let prompt_tokens = prompt.len();
        if self
            .tx
            .send(Command::Add(Submitted {
                id,
                seqs,
                prompt_tokens,
            }))
            .is_err()
        {
            return Err(EngineError::Config("the engine thread has stopped".into()));
        }
        Ok(CompletionStream {
            rx: erx,
            slot: Some(slot),
        })
    }

    /// What [`Engine::submit`] refuses before queueing: a request's settings against the
    /// engine, its prompt against the context and the KV pool.
    fn check(&self, prompt: &[u32], req: &Completion) -> Result<()> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if req.n == 0 {
            return Err(EngineError::Sampling {
                name: "n",
                reason: "must be at least 1".into(),
            });
        }
        if req.max_tokens == Some(0) {
            return Err(EngineError::Sampling {
                name: "max_tokens",
                reason: "must be at least 1".into(),
            });
        }
        if !(req.repetition_penalty.is_finite() && req.repetition_penalty > 0.0) {
            return Err(EngineError::Sampling {
                name: "repetition_penalty",
                reason: format!("must be above 0, not {}", req.repetition_penalty),
            });
        }
        for (name, k) in [
            ("top_logprobs", req.logprobs),
            ("top_prompt_logprobs", req.prompt_logprobs),
        ] {
            if k.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
                return Err(EngineError::Sampling {
                    name,
                    reason: format!(
                        "{} alternatives asked, at most {MAX_TOP_LOGPROBS}",
                        k.unwrap_or(0)
                    ),
                });
            }
        }
        Sampler::new(req.sampling.clone())?;
        if req.max_tokens.is_some_and(|m| req.min_tokens > m) {
            return Err(EngineError::Sampling {
                name: "min_tokens",
                reason: format!(
                    "{} is more than max_tokens ({})",
                    req.min_tokens,
                    req.max_tokens.unwrap_or(0)
                ),
            });
        }
        let room = self.context;
        let wanted = prompt.len() + req.max_tokens.unwrap_or(1);
        if prompt.len() >= room || wanted > room {
            return Err(EngineError::ContextExceeded {
                prompt: prompt.len(),
                max_tokens: req.max_tokens,
                context: room,
            });
        }
        if req.n * prompt.len().div_ceil(self.block_size) > self.blocks && req.n > 1 {
            return Err(EngineError::ContextExceeded {
                prompt: prompt.len() * req.n,
                max_tokens: req.max_tokens,
                context: room,
            });
        }
        Ok(())
    }

    /// [`Engine::chat`], waiting for the whole answer (blocking; not for async contexts).
    pub fn chat_blocking(&self, req: &Completion) -> Result<CompletionResult> {
        self.chat(req)?.collect_blocking(req.n)
    }
}

/// The chain of one choice: penalties (when set), the request's own processors, the tokens
/// the request forbids, the grammar, then `min_tokens`' hold on the end of the sequence.
fn processors(
    req: &Completion,
    prompt: &[u32],
    eos: &[u32],
    grammar: Option<&ProcessorFactory>,
    forbid: Option<&[u32]>,
) -> Vec<Box<dyn LogitsProcessor>> {
    let mut chain: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if req.repetition_penalty != 1.0 {
        chain.push(Box::new(RepetitionPenalty::new(
            req.repetition_penalty,
            prompt,
        )));
    }
    if req.presence_penalty != 0.0 || req.frequency_penalty != 0.0 {
        chain.push(Box::new(Penalties::new(
            req.presence_penalty,
            req.frequency_penalty,
        )));
    }
    chain.extend(req.processors.iter().map(|f| f.make()));
    if let Some(ids) = forbid {
        chain.push(Box::new(ForbidTokens(ids.to_vec())));
    }
    // The grammar's mask comes last, so that nothing re-allows what it forbids.
    chain.extend(grammar.map(|g| g.make()));
    // After it: the end is held back only where the grammar leaves another token.
    if req.min_tokens > 0 {
        chain.push(Box::new(MinTokens {
            min: req.min_tokens,
            eos: eos.to_vec(),
        }));
    }
    chain
}

/// Choice `i`'s seed: distinct per choice, the same for the same request seed.
fn choice_seed(seed: u64, choice: usize) -> u64 {
    seed ^ (choice as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Free memory of the model's device: the GPU's when it reports it, otherwise the host's
/// `MemAvailable` (4 GiB when unknown).
fn available_memory(device: &candle_core::Device) -> usize {
    if let Some((free, _)) = bora_core::device_memory(device) {
        return free;
    }
    bora_core::host_memory().map_or(4 << 30, |(free, _)| free as usize)
}

/// [`CompletionStream::next_timeout`] found no event in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout;

/// Wakes the thread that waits in [`CompletionStream::next_timeout`].
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl CompletionStream {
    /// A stream fed by the caller instead of an engine: for adapters, and for testing what
    /// consumes events (an error mid-answer, say).
    pub fn channel() -> (tokio::sync::mpsc::UnboundedSender<Event>, Self) {
        let (tx, rx) = unbounded_channel();
        (tx, Self { rx, slot: None })
    }

    /// The next event (async).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread.
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// The next event, waiting at most `timeout` (blocking the thread): `Err(Timeout)` when
    /// none came in time, so that a caller can check for its own cancellation (a Python
    /// thread's Ctrl-C, say) between waits.
    pub fn next_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> std::result::Result<Option<Event>, Timeout> {
        let deadline = std::time::Instant::now() + timeout;
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        loop {
            if let std::task::Poll::Ready(e) = self.rx.poll_recv(&mut cx) {
                return Ok(e);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Timeout);
            }
            // Woken by the sender's wake-up (or spuriously: polled again).
            std::thread::park_timeout(deadline - now);
        }
    }

    /// All events until `Done`, gathered into choices (blocking).
    pub fn collect_blocking(mut self, n: usize) -> Result<CompletionResult> {
        let mut acc = Accumulator::new(n);
        while let Some(e) = self.next_blocking() {
            if acc.add(e)? {
                break;
            }
        }
        Ok(acc.result)
    }

    /// All events until `Done`, gathered into choices (async).
    pub async fn collect(mut self, n: usize) -> Result<CompletionResult> {
        let mut acc = Accumulator::new(n);
        while let Some(e) = self.next().await {
            if acc.add(e)? {
                break;
            }
        }
        Ok(acc.result)
    }
}

struct Accumulator {
    result: CompletionResult,
}

impl Accumulator {
    fn new(n: usize) -> Self {
        let choice = Choice {
            text: String::new(),
            tool_calls: Vec::new(),
            finish_reason: None,
            logprobs: None,
            prompt_logprobs: None,
        };
        Self {
            result: CompletionResult {
                choices: vec![choice; n],
                usage: Usage::default(),
            },
        }
    }

    /// True when the request is complete.
    fn add(&mut self, e: Event) -> Result<bool> {
        match e {
            Event::Delta { choice, text } => {
                if let Some(c) = self.result.choices.get_mut(choice) {
                    c.text.push_str(&text);
                }
            }
            Event::ToolCalls { choice, calls } => {
                if let Some(c) = self.result.choices.get_mut(choice) {
                    c.tool_calls.extend(calls);
                }
            }
            Event::Logprobs { choice, content } => {
                if let Some(c) = self.result.choices.get_mut(choice) {
                    c.logprobs.get_or_insert_with(Vec::new).extend(content);
                }
            }
            Event::PromptLogprobs { choice, content } => {
                if let Some(c) = self.result.choices.get_mut(choice) {
                    c.prompt_logprobs = Some(content);
                }
            }
            Event::Finish { choice, reason } => {
                if let Some(c) = self.result.choices.get_mut(choice) {
                    c.finish_reason = Some(reason);
                }
            }
            Event::Done { usage } => {
                self.result.usage = usage;
                return Ok(true);
            }
            Event::Error { message } => return Err(EngineError::Generation(message)),
        }
        Ok(false)
    }
}
