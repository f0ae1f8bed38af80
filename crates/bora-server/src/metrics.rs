//! `GET /metrics`: Prometheus text, through the `prometheus-client` crate. Request counters and
//! latency histograms are kept by the server; the engine's own state (queue, running sequences,
//! KV blocks, prefix cache, expert routing) is read from its stats snapshot at each scrape.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bora_engine::EngineStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpertLabel {
    layer: String,
    expert: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    prompt_tokens: Counter,
    generated_tokens: Counter,
    ttft: Histogram,
    itl: Histogram,
    queue: Gauge,
    running: Gauge,
    blocks_used: Gauge,
    blocks_free: Gauge,
    prefix_lookups: Counter,
    prefix_hits: Counter,
    steps: Counter,
    kv_event_batches: Counter,
    expert_tokens: Family<ExpertLabel, Counter>,
    cache_lookups: Counter,
    cache_hits: Counter,
    cache_moves: Counter,
    cache_resident: Gauge,
    /// vLLM's names for the load signals that routers read from a worker's `/metrics`
    /// (vllm-router's load-aware policies, llm-d, Dynamo), unprefixed.
    compat: Registry,
    vllm_running: Gauge,
    vllm_waiting: Gauge,
    vllm_kv_usage: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bora");
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by status code",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of accepted requests",
            prompt_tokens.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "generation_tokens",
            "Tokens generated",
            generated_tokens.clone(),
        );
        // 1 ms to about 33 s.
        let ttft = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first generated text",
            ttft.clone(),
        );
        // 1 ms to about 4 s.
        let itl = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register(
            "inter_token_latency_seconds",
            "Between consecutive pieces of generated text of one request",
            itl.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let queue = gauge(
            &mut registry,
            "queue_depth",
            "Requests waiting for admission, as --max-queue counts them",
        );
        let running = gauge(&mut registry, "running_sequences", "Sequences running");
        let blocks_used = gauge(
            &mut registry,
            "kv_blocks_used",
            "KV cache blocks held by sequences",
        );
        let blocks_free = gauge(
            &mut registry,
            "kv_blocks_free",
            "KV cache blocks free or idle in the prefix cache",
        );
        let prefix_lookups = Counter::default();
        registry.register(
            "prefix_cache_lookups",
            "Full prompt blocks looked up in the prefix cache",
            prefix_lookups.clone(),
        );
        let prefix_hits = Counter::default();
        registry.register(
            "prefix_cache_hits",
            "Prompt blocks found in the prefix cache",
            prefix_hits.clone(),
        );
        let steps = Counter::default();
        registry.register(
            "engine_steps",
            "Engine steps run (a step: one forward pass over the running sequences)",
            steps.clone(),
        );
        let kv_event_batches = Counter::default();
        registry.register(
            "kv_event_batches",
            "KV-cache event batches published (--kv-events; the last one's seq is this minus 1)",
            kv_event_batches.clone(),
        );
        let expert_tokens = Family::<ExpertLabel, Counter>::default();
        registry.register(
            "expert_tokens",
            "Tokens routed to each expert of each layer",
            expert_tokens.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let cache_lookups = counter(
            &mut registry,
            "expert_cache_lookups",
            "Routed tokens of the layers whose experts are in host memory (--expert-cache)",
        );
        let cache_hits = counter(
            &mut registry,
            "expert_cache_hits",
            "Of them, those computed on the GPU by a cached copy of their expert",
        );
        let cache_moves = counter(
            &mut registry,
            "expert_cache_moves",
            "Experts copied to the GPU by the expert cache",
        );
        let cache_resident = gauge(
            &mut registry,
            "expert_cache_resident",
            "Experts with a copy on the GPU in the expert cache",
        );
        let mut compat = Registry::default();
        let vllm_running = gauge(
            &mut compat,
            "vllm:num_requests_running",
            "Requests running (vLLM's name, for routers)",
        );
        let vllm_waiting = gauge(
            &mut compat,
            "vllm:num_requests_waiting",
            "Requests waiting (vLLM's name, for routers)",
        );
        let vllm_kv_usage = Gauge::<f64, AtomicU64>::default();
        compat.register(
            "vllm:kv_cache_usage_perc",
            "KV cache blocks held, a fraction of all (vLLM's name, for routers)",
            vllm_kv_usage.clone(),
        );
        Self {
            registry,
            compat,
            vllm_running,
            vllm_waiting,
            vllm_kv_usage,
            requests,
            prompt_tokens,
            generated_tokens,
            ttft,
            itl,
            queue,
            running,
            blocks_used,
            blocks_free,
            prefix_lookups,
            prefix_hits,
            steps,
            kv_event_batches,
            expert_tokens,
            cache_lookups,
            cache_hits,
            cache_moves,
            cache_resident,
        }
    }

    /// Counts an answer.
    pub fn request(&self, status: u16) {
        self.requests
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    /// Counts a finished request's tokens.
    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens.inc_by(prompt as u64);
        self.generated_tokens.inc_by(generated as u64);
    }

    /// Records a time to first token.
    pub fn first_token(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    /// Records an inter-token latency.
    pub fn inter_token(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
    }

    /// The text exposition, with the engine's state as of `stats` (absent while loading).
    pub fn render(&self, stats: Option<&EngineStats>) -> String {
        if let Some(st) = stats {
            self.queue.set(st.queued as i64);
            self.running.set(st.running as i64);
            self.blocks_used.set(st.blocks_used as i64);
            self.blocks_free.set(st.blocks_free as i64);
            advance(&self.prefix_lookups, st.prefix_lookups);
            advance(&self.prefix_hits, st.prefix_hits);
            advance(&self.steps, st.steps);
            advance(&self.kv_event_batches, st.kv_event_batches);
            if let Some(c) = &st.expert_cache {
                advance(&self.cache_lookups, c.lookups);
                advance(&self.cache_hits, c.hits);
                advance(&self.cache_moves, c.moves);
                self.cache_resident.set(c.resident as i64);
            }
            for (layer, experts) in st.expert_tokens.iter().enumerate() {
                for (expert, &count) in experts.iter().enumerate() {
                    let c = self.expert_tokens.get_or_create(&ExpertLabel {
                        layer: layer.to_string(),
                        expert: expert.to_string(),
                    });
                    advance(&c, count);
                }
            }
        }
        if let Some(st) = stats {
            self.vllm_running.set(st.running as i64);
            self.vllm_waiting.set(st.waiting as i64);
            let total = st.blocks_used + st.blocks_free;
            self.vllm_kv_usage.set(if total == 0 {
                0.0
            } else {
                st.blocks_used as f64 / total as f64
            });
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.compat);
        let _ = encode_eof(&mut out);
        out
    }
}

/// Raises a counter that mirrors the engine's running total to `total`.
fn advance(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expert_cache_is_exported() {
        let m = Metrics::new();
        let mut st = EngineStats {
            expert_cache: Some(bora_engine::CacheStats {
                hits: 30,
                lookups: 100,
                moves: 7,
                resident: 5,
                capacity: 6,
            }),
            ..EngineStats::default()
        };
        let text = m.render(Some(&st));
        for line in [
            "bora_expert_cache_lookups_total 100",
            "bora_expert_cache_hits_total 30",
            "bora_expert_cache_moves_total 7",
            "bora_expert_cache_resident 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Totals advance with the engine's.
        st.expert_cache = st
            .expert_cache
            .map(|c| bora_engine::CacheStats { hits: 45, ..c });
        assert!(m
            .render(Some(&st))
            .lines()
            .any(|l| l == "bora_expert_cache_hits_total 45"));
    }

    #[test]
    fn the_load_signals_have_vllms_names_for_routers() {
        let m = Metrics::new();
        let st = EngineStats {
            running: 3,
            waiting: 2,
            queued: 7,
            blocks_used: 25,
            blocks_free: 75,
            kv_event_batches: 12,
            ..EngineStats::default()
        };
        let text = m.render(Some(&st));
        for line in [
            "vllm:num_requests_running 3",
            "vllm:num_requests_waiting 2",
            "vllm:kv_cache_usage_perc 0.25",
            "bora_running_sequences 3",
            // What --max-queue counts, not the sequences waiting.
            "bora_queue_depth 7",
            // The last KV-event batch's seq is 11: what a test waits for a router to apply.
            "bora_kv_event_batches_total 12",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
    }
}
