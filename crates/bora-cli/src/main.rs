//! `bora`: run Mixtral offline. One binary; each command is a module.

mod batch;
mod bench;
mod bench_moe;
mod bench_predict;
mod bench_skew;
mod chat;
mod check;
mod inspect;
mod load;
mod perplexity;
mod quantize;
mod report;
mod routes;
mod run;
mod serve;
mod tokenize;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bora",
    version,
    about = "Run Mixtral mixture-of-experts models offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: debug, -vv: trace); RUST_LOG, when set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log output: errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Mistral's chat API (the official SDKs work unchanged) on a local model.
    #[command(
        after_help = "Example:\n  bora serve --model models/fixtures/tiny-mixtral --port 8080\n  then: Mistral(api_key=\"x\", server_url=\"http://127.0.0.1:8080\")"
    )]
    Serve(serve::Args),
    /// Chat with a model in the terminal: streamed answers, history, /reset, /save FILE, /exit.
    #[command(
        after_help = "Examples:\n  bora chat                      (the demo model)\n  bora chat --model mistralai/Mixtral-8x7B-Instruct-v0.1 --system 'Answer briefly.'"
    )]
    Chat(chat::Args),
    /// Measure prefill and decode tokens/s by batch size, time to first token, peak memory and
    /// how evenly tokens are routed to the experts of each layer.
    #[command(
        after_help = "The memory bound: decode reads every active weight once per token (per layer the attention projections, the router and the routed experts; the LM head), so batch-1 decode cannot pass (read bandwidth) / (active bytes) tokens/s. On the CPU the read bandwidth is measured as decode reads: every worker thread streams its own part of a 512 MiB buffer (far past the caches, its pages written first so that they are real memory), summing it; the best of 5 passes, before the runs and again after them, counts. On a GPU, a copy of a 2 GiB buffer, bytes read and written counted.\n\nExamples:\n  bora bench --prompt-len 128 --gen-len 32 --batch 1,4\n  bora bench --model ~/models/Mixtral-8x7B-v0.1 --batch 1,4,16 --json"
    )]
    Bench(bench::Args),
    /// Time the MoE block alone on one layer of a Mixtral shape with random weights, by tokens
    /// per step (the criterion bench `moe`'s measurement, on any device).
    #[command(
        name = "bench-moe",
        after_help = "Examples:\n  bora bench-moe\n  bora bench-moe --device cuda --quantize q4_k --tokens 1,8,32,512"
    )]
    BenchMoe(bench_moe::Args),
    /// Check a device (CUDA) against bora's CPU path on the same weights: logits of prefill and
    /// batched decode steps, greedy tokens; the committed fixtures by default.
    #[command(
        name = "check-device",
        after_help = "Examples:\n  bora check-device --device cuda\n  bora check-device --device cuda --dtype bf16 --models models/fixtures/gguf/tiny-Q4_K_M.gguf"
    )]
    CheckDevice(check::Args),
    /// Show a checkpoint's architecture, tensors, parameter counts and size, without loading it.
    #[command(after_help = "Example:\n  bora inspect models/fixtures/tiny-mixtral")]
    Inspect(inspect::Args),
    /// Generate a completion of a raw prompt (BOS + prompt, no chat format), printed as it comes.
    #[command(
        after_help = "Example:\n  bora run --model models/fixtures/tiny-mixtral --prompt 'The quick brown fox' --raw --max-tokens 20"
    )]
    Run(run::Args),
    /// Token ids of a text, or of a chat request rendered in the model's chat format.
    #[command(
        after_help = "Examples:\n  bora tokenize --model models/tokenizers/tokenizer.model.v3 --text 'Hello [INST]' --pieces\n  bora tokenize --model ~/models/Mixtral-8x22B-Instruct-v0.1 --chat-json request.json"
    )]
    Tokenize(tokenize::Args),
    /// Score a text file: predicted tokens, summed negative log-likelihood and perplexity.
    #[command(
        after_help = "Example:\n  bora perplexity --model models/fixtures/tiny-mixtral --file README.md --json"
    )]
    Perplexity(perplexity::Args),
    /// Run a JSONL file of chat requests (Mistral's batch input) with no server.
    #[command(
        after_help = "Example:\n  bora batch --model models/fixtures/tiny-mixtral requests.jsonl answers.jsonl"
    )]
    Batch(batch::Args),
    /// Write each token's routing (layer, rank, expert, weight) to a Parquet file.
    Routes(routes::Args),
    /// Write a model as a GGUF file of one quantized type (llama.cpp's tools read it).
    #[command(
        after_help = "Examples:\n  bora quantize --model ~/models/Mixtral-8x7B-Instruct-v0.1 --out mixtral-q4_k.gguf --type q4_k\n  bora quantize --model mixtral-F16.gguf --out mixtral-Q8_0.gguf --type q8_0"
    )]
    Quantize(quantize::Args),
}

fn main() {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let res = match cli.command {
        Command::Serve(a) => serve::main(a),
        Command::Chat(a) => chat::main(a),
        Command::Bench(a) => bench::main(a),
        Command::BenchMoe(a) => bench_moe::main(a),
        Command::CheckDevice(a) => check::main(a),
        Command::Inspect(a) => inspect::main(a),
        Command::Run(a) => run::main(a),
        Command::Perplexity(a) => perplexity::main(a),
        Command::Batch(a) => batch::main(a),
        Command::Routes(a) => routes::main(a),
        Command::Tokenize(a) => tokenize::main(a),
        Command::Quantize(a) => quantize::main(a),
    };
    if let Err(e) = res {
        eprintln!("error: {}", report(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: an error whose message already
/// quotes its source (`cannot open X: No such file`) does not repeat it.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}
