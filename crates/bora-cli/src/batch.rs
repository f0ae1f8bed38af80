//! `bora batch`: a JSONL file of chat requests through the engine with no server, as a batch
//! job of `bora serve` runs them (the same runner, the same store), with a progress bar.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bora_batch::{job_for_input, JobStatus, Runner, Store};
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
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("cannot read {} as UTF-8 text", shown(&a.input)))?;
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| a.output.with_extension("bora-batch"));
    let store = Arc::new(
        Store::open(&data_dir)
            .with_context(|| format!("cannot open the job directory {}", shown(&data_dir)))?,
    );
    let loaded = a.model.load()?;
    let engine = Engine::new(loaded.model, loaded.tokenizer, EngineConfig::default())?;
    let api = LocalApi::new(engine, "bora");
    let job = job_for_input(&store, &text)?;
    if job.completed() > 0 {
        println!(
            "bora: going on with the job of {} stopped at {} of {} requests",
            shown(&a.input),
            job.completed(),
            job.total
        );
    }
    let bar = indicatif::ProgressBar::new(job.total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests  {elapsed_precise}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let runner = Runner::new(store.clone(), api, a.window);
    let ran = runner.run(&job.id, &mut |j| bar.set_position(j.completed()));
    bar.finish();
    // A failure the store could not even record (its disk full) is said all the same.
    let failed = match &ran {
        Ok(done) if done.status == JobStatus::Failed => Some(done.errors.join("; ")),
        Ok(_) => None,
        Err(e) => Some(e.explain()),
    };
    if let Some(why) = failed {
        let job = store.job(&job.id)?.unwrap_or(job);
        anyhow::bail!(
            "the job failed: {why} ({} of {} requests were answered; run the same command \
             again to go on)",
            job.completed(),
            job.total
        );
    }
    let done = ran?;
    let copy = |id: &Option<String>, to: &PathBuf| -> Result<()> {
        if let Some(id) = id {
            std::fs::copy(store.content_path(id), to)
                .with_context(|| format!("cannot write {}", shown(to)))?;
        }
        Ok(())
    };
    copy(&done.output_file, &a.output)?;
    let errors = a.output.with_extension("errors.jsonl");
    copy(&done.error_file, &errors)?;
    if a.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!(
        "{} of {} requests answered into {}{}",
        done.succeeded,
        done.total,
        shown(&a.output),
        if done.failed > 0 {
            format!("; {} failed, in {}", done.failed, shown(&errors))
        } else {
            String::new()
        }
    );
    Ok(())
}
