//! `bora chat`: an interactive chat in the terminal, streamed as it is generated.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bora_engine::chat::{ChatFormat, ChatRequest, Content, Message};
use bora_engine::{Completion, Engine, EngineConfig, Event, SamplingParams};
use serde_json::json;

use crate::load::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A system prompt for the whole conversation.
    #[arg(long)]
    system: Option<String>,
    /// Tokens per answer at most (default: up to the end of the context).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampling (default: a random one per answer).
    #[arg(long)]
    seed: Option<u64>,
    /// v1 or v3 (default: from the tokenizer).
    #[arg(long)]
    chat_format: Option<String>,
}

const HELP: &str = "Commands: /reset (forget the conversation), /save FILE (write it as JSON), \
/exit (or Ctrl-D). Ctrl-C stops an answer.";

pub fn main(a: Args) -> Result<()> {
    let chat_format = a
        .chat_format
        .as_deref()
        .map(str::parse::<ChatFormat>)
        .transpose()
        .map_err(|e| anyhow!("--chat-format: {e}"))?;
    let loaded = a.model.load()?;
    let engine = Engine::new(
        loaded.model,
        loaded.tokenizer,
        EngineConfig {
            chat_format,
            ..EngineConfig::default()
        },
    )?;
    // Ctrl-C stops the answer being written, not the program.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("cannot take Ctrl-C")?;

    eprintln!("{HELP}");
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        print!("> ");
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            break; // Ctrl-D
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                println!("(conversation cleared)");
                continue;
            }
            "/help" => {
                println!("{HELP}");
                continue;
            }
            cmd if cmd.starts_with("/save") => {
                let path = cmd["/save".len()..].trim();
                if path.is_empty() {
                    println!("usage: /save FILE");
                } else {
                    match save(path, a.system.as_deref(), &history) {
                        Ok(()) => println!("(saved {} messages to {path})", history.len()),
                        Err(e) => println!("error: {e:#}"),
                    }
                }
                continue;
            }
            cmd if cmd.starts_with('/') => {
                println!("unknown command {cmd}. {HELP}");
                continue;
            }
            _ => {}
        }
        history.push(Message::User {
            content: Some(Content::Text(line.to_string())),
        });
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::System {
                content: Some(Content::Text(s.clone())),
            });
        }
        messages.extend(history.iter().cloned());
        let mut req = Completion::new(ChatRequest {
            messages,
            tools: Vec::new(),
        });
        req.sampling = SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: 0,
            seed: 0,
        };
        req.seed = a.seed;
        req.max_tokens = a.max_tokens;
        stop.store(false, Ordering::SeqCst);
        match answer(&engine, &req, &stop, &mut out) {
            Ok(text) => history.push(Message::Assistant {
                content: Some(Content::Text(text)),
                tool_calls: None,
                prefix: false,
            }),
            Err(e) => {
                // The turn did not happen: the conversation stays as it was.
                history.pop();
                println!("error: {e:#}");
            }
        }
    }
    Ok(())
}

/// Streams one answer to `out`; returns its text (what was written before a Ctrl-C).
fn answer(
    engine: &Engine,
    req: &Completion,
    stop: &AtomicBool,
    out: &mut impl Write,
) -> Result<String> {
    let mut stream = engine.chat(req)?;
    // The engine's events come through a thread, so that a Ctrl-C is seen while waiting.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Some(e) = stream.next_blocking() {
            if tx.send(e).is_err() {
                break; // stopped: dropping the stream cancels the generation
            }
        }
    });
    let mut text = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Delta { text: t, .. }) => {
                text.push_str(&t);
                write!(out, "{t}")?;
                out.flush()?;
            }
            Ok(Event::ToolCalls { calls, .. }) => {
                writeln!(out, "[tool calls: {calls:?}]")?;
            }
            Ok(Event::Error { message }) => return Err(anyhow!(message)),
            Ok(Event::Done { .. }) => break,
            Ok(Event::Finish { .. } | Event::Logprobs { .. } | Event::PromptLogprobs { .. }) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop.swap(false, Ordering::SeqCst) {
                    write!(out, " [stopped]")?;
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    writeln!(out)?;
    Ok(text)
}

/// The conversation as a chat completions request body (readable by `bora tokenize --chat-json`).
fn save(path: &str, system: Option<&str>, history: &[Message]) -> Result<()> {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    for m in history {
        let (role, content) = match m {
            Message::User { content } => ("user", content),
            Message::Assistant { content, .. } => ("assistant", content),
            Message::System { content } => ("system", content),
            Message::Tool { content, .. } => ("tool", content),
        };
        let text = match content {
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Chunks(c)) => c.join("\n\n"),
            None => String::new(),
        };
        messages.push(json!({"role": role, "content": text}));
    }
    let body = serde_json::to_string_pretty(&json!({ "messages": messages }))?;
    std::fs::write(path, body + "\n").with_context(|| format!("cannot write {path}"))
}
