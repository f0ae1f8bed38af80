//! `bora batch`: a JSONL file of chat requests through the engine with no server, as a batch
//! job of `bora serve` runs them (`bora_batch::FileJob`: the same runner, the same store), with
//! a progress bar.

use std::path::PathBuf;

use anyhow::Result;
use bora_batch::FileJob;
use bora_engine::{Engine, EngineConfig};
use bora_server::local::LocalApi;

use crate::load::{shown, ModelArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Requests, one JSON object a line: `{"custom_id": "...", "body": {chat request}}`.
    input: PathBuf,
    /// Where the answers go, one line each in Mistral's batch output shape; lines that failed
    /// go to OUTPUT.errors.jsonl.
    output: PathBuf,
    /// Where the job is kept while it runs (default: OUTPUT with the extension bora-batch,
    /// removed once the job is done). A run stopped midway and started again with the same
    /// input goes on where it was.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    window: usize,
}

pub fn main(a: Args) -> Result<()> {
    let job = FileJob {
        input: a.input.clone(),
        output: a.output.clone(),
        data_dir: a.data_dir.clone(),
        window: a.window,
    };
    // The input is read before the model loads, so that a wrong path fails at once.
    std::fs::metadata(&job.input)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", shown(&job.input)))?;
    let loaded = a.model.load()?;
    let engine = Engine::new(loaded.model, loaded.tokenizer, EngineConfig::default())?;
    let api = LocalApi::new(engine, "bora");
    let bar = indicatif::ProgressBar::hidden();
    let mut started = |j: &bora_batch::JobRecord| {
        if j.completed() > 0 {
            println!(
                "bora: going on with the job of {} stopped at {} of {} requests",
                shown(&a.input),
                j.completed(),
                j.total
            );
        }
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_length(j.total);
        bar.set_position(j.completed());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} requests  {elapsed_precise}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    };
    let ran = job.run(api, &mut started, &mut |j| bar.set_position(j.completed()));
    bar.finish();
    let done = ran?;
    println!(
        "{} of {} requests answered into {}{}",
        done.job.succeeded,
        done.job.total,
        shown(&a.output),
        match &done.errors {
            Some(path) => format!("; {} failed, in {}", done.job.failed, shown(path)),
            None => String::new(),
        }
    );
    Ok(())
}
