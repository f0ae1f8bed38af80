//! `bora routes`: each token's routing to a Parquet file, written step by step
//! (`bora_engine::trace_routes`), with a progress bar.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt16Array, UInt32Array, UInt8Array};
use arrow_schema::{DataType, Field, Schema};
use bora_engine::chat::{render, ChatFormat};
use bora_engine::{trace_routes, RouteOptions, RouteSummary, StepRoutes};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::load::{shown, ModelArgs};

#[derive(clap::Args, Debug)]
#[command(after_help = "Columns of the Parquet file (one row per chosen expert):
  sequence  uint32   the input sequence: 0 for --file, the line's index for --requests
  position  uint32   the token's place in its sequence (0: its first token)
  token_id  uint32   the token
  layer     uint16   the layer
  rank      uint8    0 for the most probable expert, then 1, ...
  expert    uint16   the expert chosen
  weight    float32  its weight, renormalized: a token's weights in a layer sum to 1
  probs     fixed-size list of float32 (with --probs): the router's softmax over every expert

A sequence longer than --context is cut into windows, each run from position 0. Read it with
pandas.read_parquet or polars.read_parquet as it is.

Examples:
  bora routes --model models/fixtures/tiny-mixtral --file README.md --out trace.parquet
  bora routes --model mixtral-Q4_K_M.gguf --requests requests.jsonl --out trace.parquet --probs")]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A UTF-8 text, traced as one sequence (BOS first).
    #[arg(
        long,
        conflicts_with = "requests",
        required_unless_present = "requests"
    )]
    file: Option<PathBuf>,
    /// A JSONL of chat requests (`{"custom_id", "body": {...}}` as a batch job takes them, or
    /// bare bodies): each one's prompt, rendered as the chat API renders it, is a sequence.
    #[arg(long)]
    requests: Option<PathBuf>,
    /// The Parquet file to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write the router's full softmax (column `probs`).
    #[arg(long)]
    probs: bool,
    /// Window length in tokens (bounded by the model's context). The KV cache holds
    /// `--parallel` windows of it, on the CPU in f16 unless `--kv-cache-dtype` says otherwise
    /// (`--kv-cache-dtype f32` for the numerics `bora serve` has by default).
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Windows (sequences, or pieces of one longer than --context) run together in a step, as
    /// serving batches them. Default: 1 with --file (one sequence: its windows in turn), 8 with
    /// --requests.
    #[arg(long)]
    parallel: Option<usize>,
    /// Tokens run in one step, shared among its windows: the step's working memory grows with
    /// it, its speed hardly (a prefill step is compute-bound).
    #[arg(long, default_value_t = 256)]
    step_tokens: usize,
    /// Also write a report of the trace into this directory: summary.json, figures as PNG and
    /// SVG, and report.html (self-contained; opens in a browser with no network).
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn main(mut a: Args) -> Result<()> {
    // On the CPU, half the f32 cache's memory (llama.cpp's default too), so that a trace of any
    // length runs in little more than the model's own memory.
    if a.model.device == "cpu" {
        a.model.kv_cache_dtype.get_or_insert_with(|| "f16".into());
    }
    let loaded = a.model.load()?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let sequences: Vec<Vec<u32>> = match (&a.file, &a.requests) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {} as UTF-8 text", shown(file)))?;
            vec![model
                .config()
                .bos_token_id
                .into_iter()
                .chain(tok.encode_long(&text)?)
                .collect()]
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {} as UTF-8 text", shown(path)))?;
            let format = ChatFormat::detect(tok);
            let mut out = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{} line {}: not JSON", shown(path), n + 1))?;
                let body = v.get("body").unwrap_or(&v);
                let mut body = body.clone();
                if let Some(o) = body.as_object_mut() {
                    o.entry("model").or_insert("bora".into());
                }
                let parsed = bora_server::parse_request(body.to_string().as_bytes(), false)
                    .map_err(|e| {
                        anyhow::anyhow!("{} line {}: {}", shown(path), n + 1, e.message)
                    })?;
                out.push(render(format, tok, &parsed.completion.chat).map_err(|e| {
                    anyhow::anyhow!("{} line {}: {}: {e}", shown(path), n + 1, e.class())
                })?);
            }
            out
        }
        (None, None) => anyhow::bail!("give --file or --requests"),
    };
    let total: u64 = sequences.iter().map(|s| s.len() as u64).sum();
    let cfg = model.config();
    let mut writer = TraceFile::create(&a.out, a.probs, cfg.num_local_experts)?;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tokens  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let opts = RouteOptions {
        context: a.context,
        parallel: a.parallel.unwrap_or(if a.file.is_some() { 1 } else { 8 }),
        probs: a.probs,
        step_tokens: a.step_tokens.max(1),
    };
    let mut failure: Option<anyhow::Error> = None;
    let mut summary = a.report.as_ref().map(|_| {
        RouteSummary::new(
            cfg.num_hidden_layers,
            cfg.num_local_experts,
            (total / 100).max(16),
        )
    });
    let traced = trace_routes(model, &sequences, &opts, &mut |step| {
        let tokens = step.len() / (cfg.num_hidden_layers * cfg.num_experts_per_tok).max(1);
        if let Some(s) = summary.as_mut() {
            s.add(&step);
        }
        if let Err(e) = writer.write(step) {
            let msg = e.to_string();
            failure = Some(e);
            return Err(bora_engine::EngineError::Generation(msg));
        }
        bar.inc(tokens as u64);
        Ok(())
    });
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    let traced = traced?;
    writer.close()?;
    if let (Some(dir), Some(s)) = (&a.report, &summary) {
        let source = a.file.as_ref().or(a.requests.as_ref()).map(|p| shown(p));
        crate::report::write_report(
            dir,
            &format!("Expert routing of {}", source.unwrap_or_default()),
            &s.numbers(),
        )
        .with_context(|| format!("writing the report into {}", shown(dir)))?;
        println!("report: {}", shown(&dir.join("report.html")));
    }
    println!(
        "{traced} tokens of {} sequence(s) traced into {} ({} layers, top-{} of {} experts)",
        sequences.len(),
        shown(&a.out),
        cfg.num_hidden_layers,
        cfg.num_experts_per_tok,
        cfg.num_local_experts
    );
    Ok(())
}

/// A routing trace being written to a Parquet file, step by step, in the columns
/// `bora routes --help` lists.
pub(crate) struct TraceFile {
    path: PathBuf,
    schema: Arc<Schema>,
    writer: ArrowWriter<std::fs::File>,
}

impl TraceFile {
    /// Creates `path`; with `probs`, the column of the router's softmax over `experts`.
    pub fn create(path: &std::path::Path, probs: bool, experts: usize) -> Result<Self> {
        let schema = Arc::new(schema(probs, experts));
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", shown(path)))?;
        // Row groups of 64Ki rows: the writer holds one group's pages at a time, so memory
        // stays flat however long the trace.
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 16))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            writer,
        })
    }

    pub fn write(&mut self, step: StepRoutes) -> Result<()> {
        batch(&self.schema, step)
            .and_then(|b| Ok(self.writer.write(&b)?))
            .with_context(|| format!("writing {}", shown(&self.path)))
    }

    /// Writes the file's footer: a trace not closed is not readable.
    pub fn close(self) -> Result<()> {
        self.writer
            .close()
            .with_context(|| format!("cannot finish {}", shown(&self.path)))?;
        Ok(())
    }
}

fn schema(probs: bool, experts: usize) -> Schema {
    let mut fields = vec![
        Field::new("sequence", DataType::UInt32, false),
        Field::new("position", DataType::UInt32, false),
        Field::new("token_id", DataType::UInt32, false),
        Field::new("layer", DataType::UInt16, false),
        Field::new("rank", DataType::UInt8, false),
        Field::new("expert", DataType::UInt16, false),
        Field::new("weight", DataType::Float32, false),
    ];
    if probs {
        fields.push(Field::new(
            "probs",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                experts as i32,
            ),
            false,
        ));
    }
    Schema::new(fields)
}

fn batch(schema: &Arc<Schema>, s: StepRoutes) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(s.sequence)),
        Arc::new(UInt32Array::from(s.position)),
        Arc::new(UInt32Array::from(s.token_id)),
        Arc::new(UInt16Array::from(s.layer)),
        Arc::new(UInt8Array::from(s.rank)),
        Arc::new(UInt16Array::from(s.expert)),
        Arc::new(Float32Array::from(s.weight)),
    ];
    if schema.fields().len() > 7 {
        let e = s.experts as i32;
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), e)
            .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
        for row in s.probs.chunks_exact(s.experts.max(1)) {
            b.values().append_slice(row);
            b.append(true);
        }
        cols.push(Arc::new(b.finish()));
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}
