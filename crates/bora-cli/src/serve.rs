//! `bora serve`: Mistral's chat API over HTTP on a local model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_engine::chat::ChatFormat;
use bora_engine::{Engine, EngineConfig, KvBudget};
use bora_server::kv_events::TcpEndpoint;
use bora_server::{AppState, ServerConfig};

use crate::load::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default: nothing outside this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Host names served besides the loopback ones (comma-separated; `*`: any). On a loopback
    /// address only loopback names are served by default, so that a web page whose DNS name
    /// was rebound to 127.0.0.1 cannot reach the API; on another address any Host is served
    /// unless this lists some.
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    allowed_hosts: Vec<String>,
    /// Browser origins that may call the API from their pages (comma-separated, as
    /// `http://app.example:3000`; `*`: any). Other cross-origin requests get 403.
    #[arg(long, value_delimiter = ',', value_name = "ORIGINS")]
    allowed_origins: Vec<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Read the API key from this file (its first line).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// The model's name in requests and /v1/models (default: open-mixtral-8x7b or
    /// open-mixtral-8x22b for those shapes, else the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Refuse unknown request fields with 422, as Mistral's cloud does.
    #[arg(long)]
    strict_api: bool,
    /// Request bodies over this many MiB get 413.
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Connections served at once at most; one more is answered 503 and closed.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a client has to send a request's line and headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds requests in flight get to finish after SIGTERM or Ctrl-C (a second signal stops
    /// them at once).
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Memory for the KV cache in MiB (default: a quarter of the free memory).
    #[arg(long)]
    kv_cache_mib: Option<usize>,
    /// Sequences running at once at most (vLLM's --max-num-seqs); more wait for admission.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_seqs: u64,
    /// Requests waiting for admission at most; beyond it, 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// v1 or v3 (default: from the tokenizer).
    #[arg(long)]
    chat_format: Option<String>,
    /// Batch-invariant numerics (CPU): a request with `random_seed` gets the same answer alone
    /// and under load, bit for bit; prefill is slower.
    #[arg(long)]
    deterministic: bool,
    /// Where uploaded files, batch jobs and their outputs are kept (default: bora/ in the
    /// user's data directory, $XDG_DATA_HOME or ~/.local/share).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Uploaded files over this many MiB get 413.
    #[arg(long, default_value_t = 512)]
    max_upload_mib: usize,
    /// Publish the prefix cache's changes (blocks stored and evicted) as vLLM's KV-cache events
    /// on this ZeroMQ endpoint (`tcp://HOST:PORT`, PUB; HOST `*` for every interface), for
    /// KV-aware routers (vllm-router `--policy kv_aware --kv-event-source
    /// http://THIS_SERVER=tcp://HOST:PORT`).
    #[arg(long, value_name = "ENDPOINT")]
    kv_events: Option<TcpEndpoint>,
    /// The replay socket (ROUTER) for subscribers that missed batches (default: the port after
    /// --kv-events').
    #[arg(long, value_name = "ENDPOINT", requires = "kv_events")]
    kv_events_replay: Option<TcpEndpoint>,
}

/// `$XDG_DATA_HOME/bora`, else `~/.local/share/bora`.
fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("bora")
}

pub fn main(a: Args) -> Result<()> {
    let source = a.model.resolve()?;
    let cfg = source
        .config()
        .with_context(|| format!("--model {source}"))?;
    let name = match (&a.served_model_name, &a.model.model) {
        (Some(n), _) => n.clone(),
        (None, None) => bora_engine::DEMO_MODEL_NAME.to_string(),
        (None, Some(m)) if a.model.is_demo() => m.clone(),
        (None, Some(arg)) => {
            // A directory is named by its last component, a repo id by its name.
            let path = std::path::Path::new(arg);
            let fallback = if path.exists() {
                path.canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| arg.clone())
            } else {
                arg.rsplit('/')
                    .next()
                    .unwrap_or(arg)
                    .split('@')
                    .next()
                    .unwrap_or(arg)
                    .to_string()
            };
            bora_server::default_model_name(&cfg, &fallback)
        }
    };
    let api_key = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--api-key-file {}", f.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                bail!("--api-key-file {}: the file is empty", f.display());
            }
            Some(key)
        }
        (None, None) => None,
    };
    let chat_format = a
        .chat_format
        .as_deref()
        .map(str::parse::<ChatFormat>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--chat-format: {e}"))?;
    let mut server = ServerConfig::new(name.clone());
    server.description = if a.model.is_demo() {
        "DEMO: a small random-weight Mixtral built into bora; its text is noise".to_string()
    } else {
        format!(
            "Mixtral ({} layers, {} experts, top {}) from {}",
            cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok, source
        )
    };
    server.api_key = api_key;
    server.strict_api = a.strict_api;
    server.body_limit = a.max_body_mib << 20;
    let loopback = a.host.eq_ignore_ascii_case("localhost")
        || a.host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    server.allowed_hosts =
        (loopback || !a.allowed_hosts.is_empty()).then(|| a.allowed_hosts.clone());
    server.allowed_origins = a.allowed_origins.clone();
    // An upload's form holds the file and some room for its other parts.
    server.upload_limit = a
        .max_upload_mib
        .saturating_mul(1 << 20)
        .saturating_add(1 << 20);
    server.max_connections = a.max_connections;
    server.header_timeout = std::time::Duration::from_secs(a.header_timeout.max(1));
    server.drain_timeout = std::time::Duration::from_secs(a.drain_timeout);
    let (kv_tx, kv_rx) = match a.kv_events {
        Some(_) => {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx.into()), Some(rx))
        }
        None => (None, None),
    };
    let engine_config = EngineConfig {
        kv_events: kv_tx,
        kv_budget: a
            .kv_cache_mib
            .map_or(EngineConfig::default().kv_budget, KvBudget::Mib),
        max_queue: a.max_queue,
        max_running: a.max_seqs as usize,
        chat_format,
        deterministic: a.deterministic,
        ..EngineConfig::default()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        if let (Some(publish), Some(rx)) = (&a.kv_events, kv_rx) {
            let replay = a
                .kv_events_replay
                .clone()
                .unwrap_or_else(|| publish.next_port());
            let (tx, trx) = tokio::sync::mpsc::unbounded_channel();
            // The engine's thread sends on a std channel; this one hands its batches on.
            std::thread::spawn(move || {
                for events in rx {
                    if tx.send(events).is_err() {
                        break;
                    }
                }
            });
            let ends = bora_server::kv_events::start_publisher(
                publish,
                &replay,
                engine_config.block_size,
                trx,
            )
            .await
            .with_context(|| format!("cannot publish KV events on {publish} (replay {replay})"))?;
            println!(
                "bora: KV events on {} (replay {}, blocks of {} tokens)",
                ends.publish, ends.replay, engine_config.block_size
            );
        }
        let state = AppState::new(server);
        // Listening before the model is loaded: /health says 503 until it is.
        let demo = if a.model.is_demo() {
            ", the DEMO model: random weights, its text is noise"
        } else {
            ""
        };
        println!("bora: listening on http://{local} (model `{name}`{demo}; loading)");
        let loading = state.clone();
        let model_args = a.model;
        let kv_reserve = a.kv_cache_mib.map(|m| (m as u64).saturating_mul(1 << 20));
        let started = Instant::now();
        let load = tokio::task::spawn_blocking(move || -> Result<()> {
            // The placement on a GPU keeps the KV budget free beside the weights.
            let loaded = model_args.load_source_with(&source, |o| o.kv_reserve = kv_reserve)?;
            let engine = Engine::new(loaded.model, loaded.tokenizer, engine_config)?;
            loading.set_engine(engine);
            Ok(())
        });
        // Files and batch jobs: their store, and the worker that runs jobs once the model is in.
        let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
        let store = bora_batch::Store::open(&data_dir)
            .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
        let batch = bora_batch::http::BatchService::new(
            std::sync::Arc::new(store),
            a.max_upload_mib.saturating_mul(1 << 20),
            &name,
        );
        let (st, served) = (state.clone(), name.clone());
        // Lines in flight: enough to fill the running set, with room for interactive requests.
        let window = (a.max_seqs as usize).clamp(1, 64);
        batch.start_worker(
            move || {
                st.engine()
                    .ok()
                    .map(|e| bora_server::local::LocalApi::new(e.clone(), &served))
            },
            window,
        );
        let server = tokio::spawn(bora_server::serve_with(
            listener,
            state,
            bora_batch::http::routes(batch),
            bora_server::shutdown_signal(),
        ));
        load.await.context("the loading task failed")??;
        println!(
            "bora: ready in {:.1} s: http://{local}/v1/chat/completions",
            started.elapsed().as_secs_f64()
        );
        server
            .await
            .context("the server task failed")?
            .context("the server failed")?;
        println!("bora: stopped");
        Ok(())
    })
}
